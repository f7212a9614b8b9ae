"""08 · forward mode: dual numbers carry J·v forward; jacfwd against jacrev on tall and wide
Jacobians.

Reverse mode (backward, vjp) gives a row of the Jacobian per pass; forward mode, a column. The
lesson shows dual numbers and their level, jvp beside vjp, and a whole Jacobian built either way.

Sources: pytorch/tutorials intermediate_source/forward_ad_usage.py (dual levels, make_dual,
unpack_dual) and intermediate_source/jacobians_hessians.py (jacfwd, jacrev and the rule).
"""

# %% Setup
import math
import warnings

import torch
import torch.autograd.forward_ad as fwAD
from torch.func import jacfwd, jacrev, jvp, vjp

from tensor_features.lab import Lab, Try
from tensor_features.utils import fastest_seconds

# The first forward-AD call of a process loads torch's JVP decompositions through torch.jit.script,
# which warns that torch.jit.script is deprecated (torch/autograd/forward_ad.py,
# _maybe_load_decompositions): a note about torch's internals, not about this lesson's code.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated",
                        category=FutureWarning)

lab = Lab.start("08 · forward mode", __doc__, __name__)


# %% [1] Dual numbers: the value and its tangent travel together
# Forward mode starts from the inputs: inside torch.autograd.forward_ad.dual_level(),
# make_dual(x, v) returns a dual tensor, x's value with a tangent v attached, every op pushes it
# forward along with the value, and unpack_dual(f(x)).tangent is J·v, a column of J when v is a
# unit vector.
def dual_numbers(lab: Lab) -> None:
    """Dual numbers: f(x) = x**2 at x = 3, with tangent 1"""
    x = torch.tensor(3.0)
    with fwAD.dual_level():
        # x's value with the direction 1 attached (x itself gets no tangent)
        dual_x = fwAD.make_dual(x, torch.tensor(1.0))
        y = dual_x**2
        value, tangent = fwAD.unpack_dual(y)
        lab.check(value, 9.0, "f(3) = 9")
        lab.check(tangent, 6.0, "f′(x)·1 = 2x = 6 at x = 3, computed during the forward pass")
        lab.check((y.requires_grad, y.grad_fn), (False, None),
                  "no input requires grad: no graph was recorded")


lab.run(dual_numbers)


# %% [2] Leaving the level drops the tangent
# Tangents made in a level are destroyed when it exits (forward_ad_usage.py); the value stays.
def tangent_after_the_level(lab: Lab) -> None:
    """After dual_level() ends, the same tensor has no tangent"""
    x = torch.tensor(3.0)
    with fwAD.dual_level():
        y = fwAD.make_dual(x, torch.tensor(1.0)) ** 2
        inside = fwAD.unpack_dual(y).tangent
    after = fwAD.unpack_dual(y)
    lab.check(inside, 6.0, "inside the level: 2x")
    lab.check(after.tangent, None,
              "tangents made in a level are destroyed when it exits (forward_ad_usage.py)")
    lab.check(after.primal, 9.0, "the value stays")


lab.run(tangent_after_the_level)


# %% [3] make_dual outside any level
# A tangent belongs to a level: make_dual with no dual_level() around it raises.
def make_dual_outside_a_level(lab: Lab) -> None:
    """make_dual with no dual_level() around it"""
    x = torch.tensor(3.0)
    with lab.expect_error("no level exists",
                          "a tangent belongs to a level: enter dual_level() first"):
        fwAD.make_dual(x, torch.tensor(1.0))


lab.run(make_dual_outside_a_level)


# %% [4] jvp (J·v) beside vjp (uᵀ·J), against a Jacobian written by hand
# Reverse mode (backward, vjp: lesson 05 vjp) starts from the outputs and gives uᵀ·J, a row of
# the Jacobian per pass when u is a unit vector; forward mode gives J·v. torch.func.jvp and
# torch.func.vjp are the same two products as function transforms.
def small_map(x: torch.Tensor) -> torch.Tensor:
    """f: ℝ² → ℝ³, f(x) = (x0·x1, sin x0, x1²)."""
    return torch.stack([x[0] * x[1], torch.sin(x[0]), x[1] ** 2])


def jacobian_by_hand(x: torch.Tensor) -> torch.Tensor:
    """df/dx of small_map: one row per output (x0·x1, sin x0, x1²), one column per input
    (x0, x1)."""
    x0, x1 = x.tolist()
    return torch.tensor([[x1, x0],
                         [math.cos(x0), 0.0],
                         [0.0, 2 * x1]], device=x.device)


def jvp_beside_vjp(lab: Lab) -> None:
    """torch.func.jvp gives J·v (one number per output), vjp gives uᵀ·J (one number per input)"""
    x = torch.tensor([1.0, 2.0])
    jacobian = jacobian_by_hand(x)  # [[2, 1], [cos 1, 0], [0, 4]]
    v = torch.tensor([1.0, -1.0])  # a direction in the input space ℝ²
    u = torch.tensor([1.0, 1.0, 1.0])  # a weight for each of the 3 outputs
    _, jv = jvp(small_map, (x,), (v,))  # forward mode: one pass, v pushed from x to f(x)
    _, vjp_fn = vjp(small_map, x)  # reverse mode: one forward, then u pulled back from f(x) to x
    (uj,) = vjp_fn(u)
    lab.check(jv, jacobian @ v, "J (by hand) times v: 3 numbers, one per output")
    lab.check(uj, u @ jacobian, "uᵀ·J = (2 + cos 1, 1 + 4): 2 numbers, one per input")


lab.run(jvp_beside_vjp)


# %% [5] A Jacobian is n JVPs (columns) or m VJPs (rows)
# So a Jacobian of f: ℝⁿ → ℝᵐ costs n JVPs (jacfwd) or m VJPs (jacrev).
def columns_and_rows(lab: Lab) -> None:
    """The whole Jacobian of f: ℝ² → ℝ³, column by column with jvp, row by row with vjp"""
    x = torch.tensor([1.0, 2.0])
    inputs, outputs = torch.eye(2), torch.eye(3)
    columns = [jvp(small_map, (x,), (e_j,))[1] for e_j in inputs]  # J·e_j is column j
    _, vjp_fn = vjp(small_map, x)
    rows = [vjp_fn(e_i)[0] for e_i in outputs]  # e_iᵀ·J is row i
    from_columns, from_rows = torch.stack(columns, dim=1), torch.stack(rows)
    lab.check((len(columns), len(rows)), (2, 3), "n = 2 JVPs, or m = 3 VJPs")
    lab.check(from_columns, jacobian_by_hand(x), "[[2, 1], [cos 1, 0], [0, 4]]")
    lab.check(from_rows, jacobian_by_hand(x), "the same matrix, read the other way")
    # jacfwd is vmap over jvp, jacrev vmap over vjp (jacobians_hessians.py): the same loops,
    # batched.
    lab.check(jacfwd(small_map)(x), jacobian_by_hand(x), "n JVPs in one batched pass")
    lab.check(jacrev(small_map)(x), jacobian_by_hand(x), "m VJPs in one batched pass")


lab.run(columns_and_rows)


# %% [6] The cost rule, measured
# On a tall layer (n ≪ m) and a wide one (n ≫ m) the times show which is cheaper.
def tanh_layer(n: int, m: int, device: torch.device | str, seed: int = 0):
    """f(x) = tanh(W x + b): ℝⁿ → ℝᵐ, with a fixed random W (m×n) and b; returns f, a point x,
    W, b."""
    generator = torch.Generator().manual_seed(seed)
    # Drawn on the CPU, as the generator is, whatever the default device; then moved.
    weight = (torch.randn(m, n, generator=generator, device="cpu") / n**0.5).to(device)
    bias = torch.randn(m, generator=generator, device="cpu").to(device)
    x = torch.randn(n, generator=generator, device="cpu").to(device)

    def layer(inputs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(weight @ inputs + bias)

    return layer, x, weight, bias


def cost_rule(lab: Lab, small: int = 4, big: int = 2048) -> None:
    """jacfwd (n JVPs) against jacrev (m VJPs): a tall layer ℝ⁴ → ℝ²⁰⁴⁸, a wide one ℝ²⁰⁴⁸ → ℝ⁴"""
    results = {}
    for shape, (n, m) in {"tall": (small, big), "wide": (big, small)}.items():
        # The layer's random W, b, x come from a CPU generator: made there, moved to lab.device.
        layer, x, weight, bias = tanh_layer(n, m, lab.device)
        # d tanh(u)/du = 1 − tanh(u)²: the Jacobian by hand is diag(1 − tanh(W x + b)²) W, m×n.
        by_hand = (1 - torch.tanh(weight @ x + bias) ** 2)[:, None] * weight
        forward, reverse = jacfwd(layer)(x), jacrev(layer)(x)
        lab.check((forward - by_hand).abs().max().item(), 0.0,
                  f"{shape}: jacfwd = diag(1 − f²) W", atol=1e-5,
                  label=f"{shape} ({m}×{n}): max |jacfwd − by hand|")
        lab.check((reverse - by_hand).abs().max().item(), 0.0,
                  f"{shape}: jacrev = diag(1 − f²) W", atol=1e-5,
                  label=f"{shape} ({m}×{n}): max |jacrev − by hand|")
        # The device is passed for its meaning: on a GPU, the timer waits for it to finish.
        fwd_s = fastest_seconds(lambda: jacfwd(layer)(x), lab.device)
        rev_s = fastest_seconds(lambda: jacrev(layer)(x), lab.device)
        lab.note(f"{shape} ℝ^{n} → ℝ^{m}: jacfwd {fwd_s * 1e3:7.2f} ms ({n} JVPs)   "
                 f"jacrev {rev_s * 1e3:7.2f} ms ({m} VJPs)   "
                 "measured here, best of 5 on one thread")
        results[shape] = {"n": n, "m": m, "jacfwd": forward, "jacrev": reverse,
                          "jacfwd_s": fwd_s, "jacrev_s": rev_s}
    tall, wide = results["tall"], results["wide"]
    # Not checks: timings depend on the machine and its load. The counts are certain: jacfwd runs
    # one JVP per input, jacrev one VJP per output.
    lab.note(f"in this run: tall, jacrev / jacfwd = {tall['jacrev_s'] / tall['jacfwd_s']:.1f}×; "
             f"wide, jacfwd / jacrev = {wide['jacfwd_s'] / wide['jacrev_s']:.1f}×")


lab.run(cost_rule)


# %% The end
TRIES = [
    Try("the same values, computed on the GPU", flags="--device cuda", needs_cuda=True),
    Try("the tangent doubles to 12: a JVP is linear in its direction v, and the check (6) fails",
        edit=("make_dual(x, torch.tensor(1.0", "make_dual(x, torch.tensor(2.0"),
        where=dual_numbers),
    Try("J·v becomes the second column of J, (1, 0, 4), and the check (J by hand times v) still "
        "holds", edit=("v = torch.tensor([1.0, -1.0])", "v = torch.tensor([0.0, 1.0])"),
        where=jvp_beside_vjp),
]
lab.finish(TRIES)

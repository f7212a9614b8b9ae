"""08 · Hessians: second derivatives three ways, Hessian-vector products without H, and the
trainer's Hessian.

The Hessian of a scalar f is the Jacobian of its gradient. The lesson computes it several ways,
shows what a second derivative needs (create_graph=True), gets H·v without forming H, and ends on
the Hessian of the trainer's own loss.

Sources: pytorch/tutorials intermediate_source/jacobians_hessians.py (hessian = jacfwd(jacrev),
the two HVPs); torch/_functorch/eager_transforms.py (def hessian).
"""

# %% Setup
import math
import warnings

import torch
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vjp

from tensor_features.config import TrainConfig
from tensor_features.lab import Lab, Try
from tensor_features.load_data import load_data
from tensor_features.trainer.model import feature_map, initial_weights, least_squares_optimum
from tensor_features.utils import fastest_seconds

# The first forward-AD call of a process (jacfwd, jvp) loads torch's JVP decompositions through
# torch.jit.script, which warns that torch.jit.script is deprecated (torch/autograd/forward_ad.py,
# _maybe_load_decompositions): a note about torch's internals, not about this lesson's code.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated",
                        category=FutureWarning)

lab = Lab.start("08 · Hessians", __doc__, __name__)


def sine_sum(x: torch.Tensor) -> torch.Tensor:
    """f(x) = Σ sin(xᵢ): its gradient is cos(x), its Hessian diag(−sin x)."""
    return torch.sin(x).sum()


# %% [1] The Hessian of sin(x).sum(), three ways
# torch.autograd.functional.hessian, torch.func.hessian and a double backward through a gradient
# kept with create_graph=True all give it.
def hessian_three_ways(lab: Lab) -> None:
    """The Hessian of sin(x).sum() at x = [0, 1, 2], three ways"""
    x = torch.tensor([0.0, 1.0, 2.0])
    # ∂²f/∂xᵢ∂xⱼ = −sin(xᵢ) when i = j, else 0: each sin(xᵢ) depends on xᵢ alone.
    expected = [[-math.sin(0.0), 0.0, 0.0],
                [0.0, -math.sin(1.0), 0.0],
                [0.0, 0.0, -math.sin(2.0)]]
    by_functional = torch.autograd.functional.hessian(sine_sum, x)
    by_func = hessian(sine_sum)(x)
    # Double backward: keep the gradient's own graph (create_graph=True), then differentiate
    # each entry.
    leaf = x.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(sine_sum(leaf), leaf, create_graph=True)
    rows = [torch.autograd.grad(gradient[i], leaf, retain_graph=True)[0] for i in range(3)]
    by_double_backward = torch.stack(rows)
    lab.check(by_functional, expected, "diag(−sin x) = diag(0, −0.8415, −0.9093)")
    lab.check(by_func, expected, "the same, from torch.func")
    lab.check(by_double_backward, expected, "the same, one backward per row of H")


lab.run(hessian_three_ways)


# %% [2] torch.func.hessian is jacfwd(jacrev(f)), bit for bit
# On a function with cross terms, torch.func.hessian matches jacfwd(jacrev(f)) bit for bit, which
# is how it is written (the other routes are printed with their distance to it).
def coupled(x: torch.Tensor) -> torch.Tensor:
    """g(x) = Σ tanh((c·x) xᵢ) with c = (1, 2, 3): each term depends on every xⱼ, so H has cross
    terms."""
    c = torch.tensor([1.0, 2.0, 3.0], device=x.device)
    return torch.tanh((x @ c) * x).sum()


def which_composition(lab: Lab) -> None:
    """torch.func.hessian(g) beside four other routes to the same H, on a g with cross terms"""
    x = torch.tensor([0.1, -0.2, 0.3])
    by_hessian = hessian(coupled)(x)
    routes = {
        "jacfwd(jacrev)": jacfwd(jacrev(coupled))(x),  # forward-over-reverse
        "jacrev(jacrev)": jacrev(jacrev(coupled))(x),
        "jacfwd(jacfwd)": jacfwd(jacfwd(coupled))(x),
        "functional.hessian": torch.autograd.functional.hessian(coupled, x),
    }
    differences = {name: (h - by_hessian).abs().max().item() for name, h in routes.items()}
    lab.note("max |route − hessian(g)|, measured here: "
             + ", ".join(f"{name} {difference:.1e}" for name, difference in differences.items()))
    lab.check(max(differences.values()), 0.0,
              "the same H from every route, up to float32 rounding", atol=1e-5)
    # torch/_functorch/eager_transforms.py, def hessian:
    # "return jacfwd(jacrev(func, argnums), argnums)".
    lab.check(torch.equal(by_hessian, routes["jacfwd(jacrev)"]), True,
              "bit for bit: torch.func.hessian is jacfwd(jacrev(g)), the same operations in the "
              "same order")


lab.run(which_composition)


# %% [3] Without create_graph=True, the gradient has no graph to differentiate
# Without create_graph there is nothing to differentiate a second time.
def without_create_graph(lab: Lab) -> None:
    """A second derivative through a gradient taken without create_graph=True"""
    x = torch.tensor([0.0, 1.0, 2.0], requires_grad=True)
    (gradient,) = torch.autograd.grad(sine_sum(x), x)  # create_graph defaults to False
    lab.check((gradient.requires_grad, gradient.grad_fn), (False, None),
              "cos(x) came back as plain numbers, with no graph behind them")
    with lab.expect_error("element 0 of tensors does not require grad",
                          "nothing to differentiate: pass create_graph=True to the first grad"):
        torch.autograd.grad(gradient[1], x)


lab.run(without_create_graph)


# %% [4] Hessian-vector products without forming H
# Often only H·v is needed: jvp of grad (forward-over-reverse) or vjp of grad
# (reverse-over-reverse) give it without forming H.
def hvp_two_ways(lab: Lab) -> None:
    """H·v two ways: jvp of grad (forward-over-reverse) and vjp of grad (reverse-over-reverse)"""
    x = torch.tensor([0.0, 1.0, 2.0])
    v = torch.tensor([1.0, 2.0, 3.0])
    # H·v is the derivative of the gradient in the direction v: a JVP of grad(f) ...
    _, forward_over_reverse = jvp(grad(sine_sum), (x,), (v,))
    # ... or, H being symmetric, vᵀH: a VJP of grad(f).
    _, vjp_fn = vjp(grad(sine_sum), x)
    (reverse_over_reverse,) = vjp_fn(v)
    expected = [-math.sin(0.0) * 1.0, -math.sin(1.0) * 2.0, -math.sin(2.0) * 3.0]
    lab.check(forward_over_reverse, expected, "diag(−sin x)·v = −sin(x) ⊙ v")
    lab.check(reverse_over_reverse, expected, "the same vector, by the other route")


lab.run(hvp_two_ways)


# %% [5] On a larger function: the time and the memory of forming H
# Forming H takes n JVPs (torch.func.hessian) or n VJPs of the gradient, and n² numbers of
# memory.
def summed_layer(n: int, m: int, seed: int = 0):
    """f(x) = Σ tanh(W x + b) for x in ℝⁿ, a fixed random W (m×n) and b: a dense n×n Hessian;
    on the default device (the lab's, inside an observation)."""
    generator = torch.Generator().manual_seed(seed)
    # A CPU generator draws on the CPU (device="cpu"), the same numbers whatever the default
    # device; .to() then moves them there.
    device = torch.get_default_device()
    weight = (torch.randn(m, n, generator=generator, device="cpu") / n**0.5).to(device)
    bias = torch.randn(m, generator=generator, device="cpu").to(device)
    x = torch.randn(n, generator=generator, device="cpu").to(device)
    v = torch.randn(n, generator=generator, device="cpu").to(device)

    def f(inputs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(weight @ inputs + bias).sum()

    return f, x, v, weight, bias


def hvp_against_forming_h(lab: Lab, n: int = 512, m: int = 64) -> None:
    """f(x) = Σ tanh(W x + b), x in ℝ⁵¹²: H·v from the formed H, and without it"""
    f, x, v, weight, bias = summed_layer(n, m)
    # By hand: H = Wᵀ diag(tanh″(u)) W with u = W x + b and tanh″ = −2 tanh (1 − tanh²).
    t = torch.tanh(weight @ x + bias)
    hvp_by_hand = weight.T @ (-2 * t * (1 - t**2) * (weight @ v))
    full_hessian = hessian(f)(x)  # n JVPs of grad(f): an n×n matrix
    from_h = full_hessian @ v
    _, forward_over_reverse = jvp(grad(f), (x,), (v,))  # one JVP of grad(f)
    (reverse_over_reverse,) = vjp(grad(f), x)[1](v)  # one VJP of grad(f)
    for name, hvp in {"from_h": from_h, "forward_over_reverse": forward_over_reverse,
                      "reverse_over_reverse": reverse_over_reverse}.items():
        lab.check((hvp - hvp_by_hand).abs().max().item(), 0.0, "Wᵀ (tanh″(u) ⊙ W v)",
                  atol=1e-5, label=f"max |{name} − by hand|")
    h_bytes = full_hessian.numel() * full_hessian.element_size()
    hvp_bytes = forward_over_reverse.numel() * forward_over_reverse.element_size()
    lab.check((h_bytes, hvp_bytes), (n * n * 4, n * 4),
              f"H holds n² = {n * n} float32 numbers, H·v n = {n}")
    # The device is passed for its meaning: on a GPU, the timer waits for it to finish.
    seconds = {
        "forming H, then H @ v": fastest_seconds(lambda: hessian(f)(x) @ v, lab.device,
                                                 repeats=3),
        "jvp of grad": fastest_seconds(lambda: jvp(grad(f), (x,), (v,)), lab.device, repeats=3),
        "vjp of grad": fastest_seconds(lambda: vjp(grad(f), x)[1](v), lab.device, repeats=3),
    }
    lab.note("measured here, best of 3 on one thread: "
             + ",  ".join(f"{name} {s * 1e3:.2f} ms" for name, s in seconds.items()))
    # Not a check: timings depend on the machine and its load. The work is what is certain:
    # forming H runs n = 512 JVPs of grad, one HVP runs one.
    fastest_hvp = min(seconds["jvp of grad"], seconds["vjp of grad"])
    lab.note(f"in this run, forming H ({n} JVPs of grad) took "
             f"{seconds['forming H, then H @ v'] / fastest_hvp:.1f}× as long as the faster "
             "HVP (one)")


lab.run(hvp_against_forming_h)


# %% [6] The trainer's loss: its Hessian is 2ΦᵀΦ/n
# Last, the trainer's loss mean((Φw − y)²): its Hessian is 2ΦᵀΦ/n, and the eigenvalues behind the
# trainer's printed step-size limit and condition number are this matrix's.
def trainer_hessian(lab: Lab) -> None:
    """The trainer's loss mean((Φw − y)²) at its initial w: Hessian, H·v and eigenvalues"""
    config = TrainConfig()  # the defaults of python -m tensor_features.train
    # The trainer's seeded data and starting w, moved to lab.device as the trainer moves them.
    x, y = load_data(config.n, config.noise, config.seed, device=lab.device)
    w0 = initial_weights(config.degree, config.seed, lab.device)  # the trainer's start, 3×1
    phi = feature_map(x, config.degree)  # Φ = [x, x², x³], n×3

    loss = lambda w: ((phi @ w - y) ** 2).mean()  # the trainer's mse loss, as a function of w
    n, d = phi.shape
    by_autograd = hessian(loss)(w0).reshape(d, d)  # hessian of a 3×1 input: shape 3×1×3×1
    # ∇L = 2Φᵀ(Φw − y)/n, so ∇²L = 2ΦᵀΦ/n: the same at every w, for every y.
    closed_form = 2 * phi.T @ phi / n
    lab.check(by_autograd, closed_form, "2ΦᵀΦ/n", rtol=1e-5, atol=1e-6)
    v = torch.tensor([[1.0], [-1.0], [0.5]])
    _, hvp = jvp(grad(loss), (w0,), (v,))
    lab.check(hvp, closed_form @ v, "2ΦᵀΦv/n, without forming H")
    # What the trainer computes: the normal equations in float64, and eigvalsh of their 2ΦᵀΦ/n.
    optimum = least_squares_optimum(phi, y)
    eigenvalues = torch.linalg.eigvalsh(by_autograd)
    lab.check(eigenvalues, optimum.hessian_eigenvalues, "the trainer's Hessian spectrum",
              rtol=1e-4)
    stability_limit = 2 / eigenvalues[-1].item()
    condition_number = (eigenvalues[-1] / eigenvalues[0]).item()
    lab.check(stability_limit, optimum.max_stable_lr, "the trainer's 'stability limit 2/λmax'",
              rtol=1e-4)
    lab.check(condition_number, optimum.condition_number,
              "the trainer's 'Hessian condition number'", rtol=1e-4)
    lab.note("python -m tensor_features.train prints: stability limit 2/λmax = "
             f"{stability_limit:.4g}; Hessian condition number {condition_number:.4g}")


lab.run(trainer_hessian)


# %% The end
TRIES = [
    Try("the same values, computed on the GPU", flags="--device cuda", needs_cuda=True),
    Try("the gradient keeps its graph, so the second grad works and the expected error never "
        "comes: that check fails",
        edit=("torch.autograd.grad(sine_sum(x), x)",
              "torch.autograd.grad(sine_sum(x), x, create_graph=True)"),
        where=without_create_graph),
    Try("a summed loss: its Hessian is 2ΦᵀΦ, n = 100 times 2ΦᵀΦ/n, so the Hessian, H·v, "
        "eigenvalue and stability-limit checks fail; the condition number, a ratio of two "
        "eigenvalues, still matches",
        edit=("((phi @ w - y) ** 2).mean()", "((phi @ w - y) ** 2).sum()"),
        where=trainer_hessian),
]
lab.finish(TRIES)

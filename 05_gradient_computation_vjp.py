"""05 · vector-Jacobian products: what backward(v) computes, and three ways to get a whole Jacobian.

For a vector output y = f(x), backward(v) does not build the Jacobian J = dy/dx; it
computes the product vᵀJ, one row's worth of work. A full Jacobian therefore costs one
backward per output, unless the rows are batched: autograd.grad(is_grads_batched=True)
or torch.func.vmap over torch.func.vjp. The three must agree; their times differ a lot.
Last, the batch trap: grad(y.sum(), x) is a per-sample gradient only when samples do not
interact, which BatchNorm in train mode breaks.
"""

# %% Setup
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # find tensor_features when run from elsewhere

import torch
from torch.func import jacrev, vjp, vmap

from tensor_features.lab import Lab
from tensor_features.cli import int_in_range
from tensor_features.utils import median_seconds


# %% [1] The seed's example: backward(v) gives vᵀJ
def seed_example(lab: Lab) -> tuple[torch.Tensor, torch.Tensor]:
    lab.show("x = [1., 2.]; y = x**2; y.backward(v) with v = [1., 1.], then v = [1., 0.5]")
    x = torch.tensor([1.0, 2.0], requires_grad=True, device=lab.device)
    y = x**2  # J = diag(2x) = diag(2, 4)
    y.backward(torch.tensor([1.0, 1.0], device=lab.device))
    ones = x.grad.clone()
    lab.check("x.grad", ones, [2.0, 4.0], "vᵀJ = [1, 1] diag(2x) = [2, 4]")
    x.grad = None
    y = x**2
    y.backward(torch.tensor([1.0, 0.5], device=lab.device))
    lab.check("x.grad", x.grad, [2.0, 2.0], "[1, 0.5] diag(2, 4): the weights of v, not J itself")
    return ones, x.grad


# %% The layer whose Jacobian we take: y = tanh(W x + b)
def tanh_layer(size: int, device: torch.device, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    weight = (torch.randn(size, size, generator=generator) / size**0.5).to(device)
    bias = torch.randn(size, generator=generator).to(device)
    x = torch.randn(size, generator=generator).to(device)

    def layer(inputs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(weight @ inputs + bias)

    # d tanh(u)/du = 1 - tanh(u)^2, so J = diag(1 - y^2) W: the oracle the three methods meet.
    analytic = (1 - layer(x) ** 2)[:, None] * weight
    return layer, x, analytic


def jacobian_by_loop(layer, x: torch.Tensor) -> torch.Tensor:
    """One autograd.grad per output: row i is e_iᵀ J."""
    x = x.detach().requires_grad_()
    y = layer(x)
    basis = torch.eye(y.numel(), device=x.device)
    rows = [torch.autograd.grad(y, x, basis[i], retain_graph=True)[0] for i in range(y.numel())]
    return torch.stack(rows)


def jacobian_by_batched_grad(layer, x: torch.Tensor) -> torch.Tensor:
    """All rows in one call: autograd.grad vmaps its backward over the first dim of grad_outputs."""
    x = x.detach().requires_grad_()
    y = layer(x)
    basis = torch.eye(y.numel(), device=x.device)
    return torch.autograd.grad(y, x, basis, is_grads_batched=True)[0]


def jacobian_by_vmap_vjp(layer, x: torch.Tensor) -> torch.Tensor:
    """torch.func: one forward, then the vjp function vmapped over the unit vectors."""
    y, vjp_fn = vjp(layer, x.detach())
    basis = torch.eye(y.numel(), device=x.device)
    return vmap(vjp_fn)(basis)[0]


# %% [2] The Jacobian, three ways (and jacrev), on a small layer
def jacobian_three_ways(lab: Lab, size: int = 4) -> dict:
    lab.show(f"J of tanh(W x + b), {size}×{size}: grad loop | grad(is_grads_batched=True) | vmap(vjp) | jacrev")
    layer, x, analytic = tanh_layer(size, lab.device)
    results = {
        "loop": jacobian_by_loop(layer, x),
        "is_grads_batched": jacobian_by_batched_grad(layer, x),
        "vmap(vjp)": jacobian_by_vmap_vjp(layer, x),
        "jacrev": jacrev(layer)(x),
    }
    for name, jacobian in results.items():
        lab.check(f"{name}: max |J - J_analytic|", (jacobian - analytic).abs().max().item(), 0.0,
                  "diag(1 - y²) W", atol=1e-5)
    return results


# %% [3] Two traps in the hand-written loop
def loop_traps(lab: Lab, size: int = 3) -> dict:
    lab.show("for i: y.backward(e_i, retain_graph=True); rows.append(x.grad)     # no reset, no clone")
    layer, x0, analytic = tanh_layer(size, lab.device)
    x = x0.detach().requires_grad_()
    y = layer(x)
    basis = torch.eye(size, device=lab.device)

    cumulative = []
    for i in range(size):
        y.backward(basis[i], retain_graph=True)
        cumulative.append(x.grad.clone())  # cloned, but .grad was never reset
    cumulative = torch.stack(cumulative)
    lab.check("row 2 without reset", cumulative[2], analytic[:3].sum(0), "J0 + J1 + J2: rows pile up")

    aliased = []
    for i in range(size):
        x.grad = None if i == 0 else x.grad.zero_()
        y.backward(basis[i], retain_graph=True)
        aliased.append(x.grad)  # the same tensor object every time: zero_() reuses it
    aliased = torch.stack(aliased)
    lab.check("all rows, no clone()", aliased, analytic[-1].expand(size, size),
              "every row is the last row: one aliased tensor")
    lab.note("Fix: x.grad = None (or zero_()) before each backward, and append x.grad.clone().")
    return {"cumulative": cumulative, "aliased": aliased, "analytic": analytic}


# %% [4] Their times at a size where it shows
def jacobian_timings(lab: Lab, size: int = 256, repeats: int = 5) -> dict:
    lab.show(f"time the three on a {size}×{size} tanh layer (median of {repeats})")
    layer, x, analytic = tanh_layer(size, lab.device)
    methods = {
        "grad loop": jacobian_by_loop,
        "is_grads_batched": jacobian_by_batched_grad,
        "vmap(vjp)": jacobian_by_vmap_vjp,
    }
    seconds = {}
    for name, method in methods.items():
        jacobian = method(layer, x)
        seconds[name] = median_seconds(lambda: method(layer, x), repeats=repeats, device=lab.device)
        lab.check(f"{name}: {seconds[name] * 1e3:7.2f} ms, max error",
                  (jacobian - analytic).abs().max().item(), 0.0, "agrees with diag(1 - y²) W", atol=1e-5)
    slowest = seconds["grad loop"]
    lab.note("speed-up over the loop: " + ", ".join(
        f"{name} {slowest / s:.1f}x" for name, s in seconds.items() if name != "grad loop"))
    lab.note(f"The loop runs {size} backward passes through Python; vmap(vjp) runs one batched\n"
             "backward: a matrix-matrix product instead of a matrix-vector product per row.")
    return seconds


# %% [5] Why is_grads_batched can be no faster than the loop
def batched_grad_fallback(lab: Lab, size: int = 8) -> list[str]:
    lab.show("torch._C._debug_only_display_vmap_fallback_warnings(True); grad(..., is_grads_batched=True)")
    layer, x, _ = tanh_layer(size, lab.device)
    # is_grads_batched uses the legacy vmap prototype; an op whose backward lacks a batching
    # rule there runs once per row in a hidden loop. The warning is off unless asked for.
    torch._C._debug_only_display_vmap_fallback_warnings(True)
    try:
        with lab.expect_warning("not yet implemented the batching rule for aten::tanh_backward",
                                "tanh's backward falls back to a per-row loop") as caught:
            jacobian_by_batched_grad(layer, x)
    finally:
        torch._C._debug_only_display_vmap_fallback_warnings(False)
    lab.note("torch.func.vmap has that rule, which is why vmap(vjp) and jacrev stay fast.")
    return caught.warnings


# %% [6] The batch trap: grad(y.sum(), x) is per-sample only if samples do not interact
def per_sample_trap(lab: Lab, batch: int = 5, features: int = 3) -> dict:
    lab.show(f"model = Linear({features}, {features}) -> BatchNorm1d -> tanh, y_i = model(x)[i].sum()\n"
             "compare grad(y.sum(), x)[i] with the per-sample gradient dy_i/dx_i")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, features, generator=generator).to(lab.device)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(features, features), torch.nn.BatchNorm1d(features),
                                torch.nn.Tanh()).to(lab.device)
    gaps = {}
    for mode in ("train", "eval"):
        model.train(mode == "train")
        inputs = x.clone().requires_grad_()
        outputs = model(inputs).sum(dim=1)  # y_i, one scalar per sample
        (summed,) = torch.autograd.grad(outputs.sum(), inputs, retain_graph=True)
        # The honest per-sample gradient dy_i/dx_i: row i of grad(y_i, x), one backward each.
        per_sample = torch.stack([
            torch.autograd.grad(outputs[i], inputs, retain_graph=True)[0][i] for i in range(batch)
        ])
        gaps[mode] = (summed - per_sample).abs().max().item()
    lab.check(f"train mode: gap {gaps['train']:.4f} > 0.001", gaps["train"] > 1e-3, True,
              "batch statistics couple the samples")
    lab.note("Each x_i moves the batch mean and variance, and so every y_j.")
    lab.check("eval mode:  max |sum-grad - per-sample|", gaps["eval"], 0.0,
              "running statistics: samples independent", atol=1e-6)
    return gaps


# %% Run
def main(argv: list[str] | None = None) -> int:
    lab = Lab.from_argv(
        "05 · vector-Jacobian products", __doc__, argv,
        add_arguments=lambda parser: parser.add_argument(
            "--size", type=int_in_range(2, 4096), default=256, metavar="N",
            help="layer size for the timing in [4], 2..4096 (default: %(default)s)"),
    )
    seed_example(lab)
    jacobian_three_ways(lab)
    loop_traps(lab)
    jacobian_timings(lab, size=lab.args.size)
    batched_grad_fallback(lab)
    per_sample_trap(lab)
    return lab.finish([
        "--size 1024: the loop grows with the number of rows, vmap(vjp) much less",
        "--device cuda: the loop pays one kernel launch per row; vmap does not",
        "in [6], swap BatchNorm1d for LayerNorm: samples stop interacting, the train gap vanishes",
    ])


if __name__ == "__main__":
    sys.exit(main())

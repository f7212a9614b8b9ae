"""05 · vjp: what backward(v) computes for a vector output, and three ways to get a whole Jacobian.

For a vector output y = f(x), backward(v) does not build the Jacobian J = dy/dx; it computes
the vector-Jacobian product vᵀJ. A full Jacobian is one such product per row. The lesson gets
all the rows three ways and checks them (and torch.func.jacrev) against the Jacobian by hand,
shows two traps of a hand-written loop, times the three ways and looks inside each, then shows
the batch trap of per-sample gradients.
"""

# %% Setup
import contextlib
import warnings

import torch
from torch.func import jacrev, vjp, vmap
from torch.utils._python_dispatch import TorchDispatchMode

from tensor_features.cli import int_in_range
from tensor_features.lab import Lab, Try
from tensor_features.utils import fastest_seconds

lab = Lab.start("05 · vjp", __doc__, __name__, add_arguments=lambda parser: parser.add_argument(
    "--size", type=int_in_range(2, 512), default=256, metavar="N",
    help="layer size for the timings in [4], 2..512 (default: %(default)s)"))


# %% [1] The original example: backward(v) gives vᵀJ
# For a vector output y = f(x), backward(v) computes the vector-Jacobian product vᵀJ: the
# original example (docs/original-description.ko.md, "5. 벡터 출력과 VJP"), then a J that is
# not symmetric, where vᵀJ and Jv differ.
def original_example(lab: Lab) -> None:
    """
    The original example, y = x**2 at x = [1, 2], y.backward(v); then y = W x: J = W, not symmetric
    """
    # docs/original-description.ko.md, "5. 벡터 출력과 VJP", with a check in place of print().
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x**2  # J = diag(2x) = diag(2, 4)
    # "torch.autograd is an engine for computing vector-Jacobian product" (pytorch/tutorials,
    # beginner_source/blitz/autograd_tutorial.py): y.backward(v) adds vᵀJ into x.grad
    # (None before, so it now holds vᵀJ).
    y.backward(torch.tensor([1.0, 1.0]))
    lab.check(x.grad, [2.0, 4.0], "vᵀJ = [1, 1] diag(2, 4) = [2, 4]")
    # A diagonal J is symmetric, so vᵀJ = Jv there. y = W x has J = W, and this W is not
    # symmetric.
    W = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    x.grad = None
    y = W @ x
    y.backward(torch.tensor([1.0, 0.5]))
    lab.check(x.grad, [2.5, 4.0],
              "vᵀW = 1 · [1, 2] + 0.5 · [3, 4]: v weights the rows of J (Wv is [2.0, 5.0])")


lab.run(original_example)


# %% [2] The Jacobian of a tanh layer, three ways (and jacrev)
# A full Jacobian is one vector-Jacobian product per row: a loop of autograd.grad calls, one
# autograd.grad call with is_grads_batched=True, or torch.func.vmap over torch.func.vjp. The
# three, and torch.func.jacrev, agree with diag(1 - y²) W within 1e-5.
def tanh_layer(size: int, seed: int = 0):
    """A seeded layer y = tanh(W x + b), a point x, and its Jacobian diag(1 - y²) W by hand,
    on the default device (the lab's, inside an observation)."""
    # A CPU generator draws on the CPU (device="cpu"), the same numbers whatever the default
    # device; .to() then moves them there.
    generator = torch.Generator().manual_seed(seed)
    device = torch.get_default_device()
    weight = (torch.randn(size, size, generator=generator, device="cpu") / size**0.5).to(device)
    bias = torch.randn(size, generator=generator, device="cpu").to(device)
    x = torch.randn(size, generator=generator, device="cpu").to(device)

    def layer(inputs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(weight @ inputs + bias)

    # d tanh(u)/du = 1 - tanh(u)², so J = diag(1 - y²) W: the oracle the three methods meet.
    analytic = (1 - layer(x) ** 2)[:, None] * weight
    return layer, x, analytic


def jacobian_by_loop(layer, x: torch.Tensor) -> torch.Tensor:
    """One autograd.grad call per output: row i is e_iᵀ J."""
    x = x.detach().requires_grad_()
    y = layer(x)
    basis = torch.eye(y.numel())
    rows = [torch.autograd.grad(y, x, basis[i], retain_graph=True)[0] for i in range(y.numel())]
    return torch.stack(rows)


def jacobian_by_batched_grad(layer, x: torch.Tensor) -> torch.Tensor:
    """One autograd.grad call with is_grads_batched=True: the first dim of grad_outputs is a
    batch."""
    x = x.detach().requires_grad_()
    y = layer(x)
    basis = torch.eye(y.numel())
    return torch.autograd.grad(y, x, basis, is_grads_batched=True)[0]


def jacobian_by_vmap_vjp(layer, x: torch.Tensor) -> torch.Tensor:
    """torch.func: one forward pass, then the vjp function vmapped over the unit vectors."""
    y, vjp_fn = vjp(layer, x.detach())
    basis = torch.eye(y.numel())
    return vmap(vjp_fn)(basis)[0]


def jacobian_three_ways(lab: Lab, size: int = 4) -> None:
    """The 4×4 Jacobian of tanh(W x + b): grad loop, is_grads_batched, vmap(vjp), jacrev"""
    layer, x, analytic = tanh_layer(size)
    results = {
        "grad loop": jacobian_by_loop(layer, x),
        "is_grads_batched": jacobian_by_batched_grad(layer, x),
        "vmap(vjp)": jacobian_by_vmap_vjp(layer, x),
        "jacrev": jacrev(layer)(x),
    }
    for name, jacobian in results.items():
        lab.check((jacobian - analytic).abs().max().item(), 0.0,
                  "within 1e-5: diag(1 - y²) W, by hand", atol=1e-5,
                  label=f"{name}: max |J - diag(1 - y²) W|")


lab.run(jacobian_three_ways)


# %% [3] Two traps in a hand-written loop, and the fix
# Two traps of a hand-written loop of y.backward(e_i): rows that pile up when x.grad is never
# reset, and rows that all read as the last when x.grad is reset in place with zero_() and
# appended without clone().
def loop_traps(lab: Lab, size: int = 3) -> None:
    """Rows by y.backward(e_i): x.grad never reset; reset with zero_() and not cloned; fixed"""
    layer, x0, analytic = tanh_layer(size)
    x = x0.detach().requires_grad_()
    y = layer(x)
    basis = torch.eye(size)

    no_reset = []
    for i in range(size):
        y.backward(basis[i], retain_graph=True)  # adds e_iᵀJ into x.grad
        no_reset.append(x.grad.clone())  # cloned, but x.grad is never reset
    no_reset = torch.stack(no_reset)
    lab.check(no_reset, analytic.cumsum(0), "row i holds rows 0..i of J, summed: the rows pile up")

    no_clone = []
    for i in range(size):
        x.grad.zero_()  # reset in place: backward adds into the same tensor again
        y.backward(basis[i], retain_graph=True)
        no_clone.append(x.grad)  # not cloned
    one_object = all(row is no_clone[0] for row in no_clone)
    no_clone = torch.stack(no_clone)
    lab.check(one_object, True, f"the list holds one tensor object {size} times")
    lab.check(no_clone, analytic[-1].expand(size, size), "so every row reads as the last row")

    fixed = []
    for i in range(size):
        x.grad = None  # the next backward stores a new tensor
        y.backward(basis[i], retain_graph=True)
        fixed.append(x.grad)
    fixed = torch.stack(fixed)
    lab.check(fixed, analytic, "reset to None before each backward: row i is e_iᵀJ")


lab.run(loop_traps)


# %% [4] The three ways on an N×N layer (--size N), timed
# The three ways again, each checked against diag(1 - y²) W; the lesson prints the time each
# took on this machine.
def jacobian_timings(lab: Lab, size: int = 256, repeats: int = 3) -> None:
    """The three ways on an N×N layer (--size N, default 256): each checked, then timed here"""
    layer, x, analytic = tanh_layer(size)
    methods = {
        "grad loop": jacobian_by_loop,
        "is_grads_batched": jacobian_by_batched_grad,
        "vmap(vjp)": jacobian_by_vmap_vjp,
    }
    jacobians, seconds = {}, {}
    for name, method in methods.items():
        jacobians[name] = method(layer, x)
        lab.check((jacobians[name] - analytic).abs().max().item(), 0.0,
                  "within 1e-5: diag(1 - y²) W, by hand",
                  atol=1e-5, label=f"{name}, {size}×{size}: max |J - diag(1 - y²) W|")
        seconds[name] = fastest_seconds(lambda: method(layer, x), lab.device, repeats)
    lab.note(f"Time per Jacobian, measured here (fastest of {repeats}, one CPU thread; rerun to "
             "see the spread):\n"
             + "\n".join(f"  {name:<17} {seconds[name] * 1e3:9.2f} ms" for name in methods))
    lab.note(f"All three do the same {size} × {size}² multiply-adds for Wᵀ, in different calls "
             "([5] counts them at\n"
             f"N = 8). The loop: {size} autograd.grad calls, each one matrix-vector product and "
             "one tanh_backward.\n"
             "is_grads_batched: one autograd.grad call, but its legacy vmap does Wᵀ's product as "
             "one bmm over\n"
             f"a batch of {size} stride-0 views of the one Wᵀ (expand: nothing copied), and falls "
             "back to one\n"
             "tanh_backward call per row. vmap(vjp): one tanh_backward on all "
             f"{size} unit vectors and one\n"
             "matrix-matrix product (mm).")


lab.run(jacobian_timings, size=lab.args.size)


# %% [5] Inside the three ways: the ops each runs, and the fallback is_grads_batched warns about
# The lesson counts the matrix products (mv, mm, bmm) and tanh_backward calls each of the three
# ways runs, then shows the legacy-vmap fallback that is_grads_batched warns about once fallback
# warnings are on.
class CountedOps(TorchDispatchMode):
    """Counts the matrix products and tanh_backward calls run inside it, by op and operand shapes.

    A dispatch mode sees each aten op as it really runs, after autograd and either vmap have
    rewritten it (torch/utils/_python_dispatch.py; torch.utils.flop_counter counts this way).
    """

    COUNTED = ("mv", "mm", "bmm", "tanh_backward")

    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.COUNTED:
            shapes = ", ".join("×".join(map(str, arg.shape))
                               for arg in args if isinstance(arg, torch.Tensor))
            key = f"{name}({shapes})"
            self.counts[key] = self.counts.get(key, 0) + 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def vmap_fallback_warnings():
    """Turn on the fallback warnings of both vmaps (the legacy one and torch.func's), off again
    after."""
    torch._C._debug_only_display_vmap_fallback_warnings(True)
    torch._C._functorch._set_vmap_fallback_warning_enabled(True)
    try:
        yield
    finally:
        torch._C._debug_only_display_vmap_fallback_warnings(False)
        torch._C._functorch._set_vmap_fallback_warning_enabled(False)


def batched_grad_fallback(lab: Lab, size: int = 8) -> None:
    """
    The three ways at N = 8: the ops each runs, counted; then the vmap fallback warnings turned on
    """
    layer, x, _ = tanh_layer(size)
    n = size
    with CountedOps() as loop_ops:
        jacobian_by_loop(layer, x)
    lab.check(loop_ops.counts, {f"mv({n}×{n}, {n})": n + 1, f"tanh_backward({n}, {n})": n},
              "the forward's W x, then per row one tanh_backward and one Wᵀ times a vector: "
              f"{n} + 1 mv")
    with CountedOps() as batched_ops:
        jacobian_by_batched_grad(layer, x)
    lab.check(batched_ops.counts,
              {f"mv({n}×{n}, {n})": 1, f"tanh_backward({n}, {n})": n,
               f"bmm({n}×{n}×{n}, {n}×{n}×1)": 1},
              f"one bmm over Wᵀ expanded to a batch of {n}; tanh_backward still once per row, "
              "on one row each")
    with CountedOps() as func_ops:
        jacobian_by_vmap_vjp(layer, x)
    lab.check(func_ops.counts,
              {f"mv({n}×{n}, {n})": 1, f"tanh_backward({n}×{n}, {n})": 1,
               f"mm({n}×{n}, {n}×{n})": 1},
              f"one tanh_backward on all {n} unit vectors, then its {n} rows, diag(1 - y²), times "
              "W as one matrix product")
    with vmap_fallback_warnings():
        # A fallback runs an op once per row of the batch
        # (aten/src/ATen/LegacyBatchedFallback.cpp).
        with lab.expect_warning("batching rule for aten::tanh_backward",
                                "the legacy vmap behind is_grads_batched has no rule for tanh's "
                                "backward; the message points to torch.func"):
            jacobian_by_batched_grad(layer, x)
        with warnings.catch_warnings(record=True) as func_warnings:
            warnings.simplefilter("always")
            jacobian_by_vmap_vjp(layer, x)
    func_messages = [str(warning.message) for warning in func_warnings]
    lab.check(func_messages, [],
              "no fallback warning from torch.func.vmap: it batches tanh's backward itself")


lab.run(batched_grad_fallback)


# %% [6] The batch trap: grad(y.sum(), x) is per-sample only if samples do not interact
# grad(y.sum(), x) is a per-sample gradient only while samples do not interact, which BatchNorm
# in train mode breaks.
def per_sample_trap(lab: Lab, batch: int = 5, features: int = 3) -> None:
    """Linear -> BatchNorm1d -> tanh: grad(y.sum(), x)[i] vs the per-sample gradient dy_i/dx_i"""
    generator = torch.Generator().manual_seed(0)
    # A CPU generator draws on the CPU (device="cpu"); .to() moves x to the lab's device.
    x = torch.randn(batch, features, generator=generator, device="cpu").to(lab.device)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(features, features),
                                torch.nn.BatchNorm1d(features), torch.nn.Tanh())
    gaps, summed, per_sample = {}, {}, {}
    for mode in ("train", "eval"):
        model.train(mode == "train")
        inputs = x.clone().requires_grad_()
        outputs = model(inputs).sum(dim=1)  # y_i: one number per sample
        (summed[mode],) = torch.autograd.grad(outputs.sum(), inputs, retain_graph=True)
        # The per-sample gradient dy_i/dx_i: row i of grad(y_i, x), one backward per sample.
        per_sample[mode] = torch.stack([
            torch.autograd.grad(outputs[i], inputs, retain_graph=True)[0][i] for i in range(batch)
        ])
        gaps[mode] = (summed[mode] - per_sample[mode]).abs().max().item()
    # docs, torch.nn.BatchNorm1d: in training the mean and variance are those of the batch;
    # in eval mode the running estimates are used instead.
    lab.check(gaps["train"] > 1e-3, True,
              "batch statistics couple the samples: each x_j moves every y_i",
              label=f"train mode: max |sum-grad - per-sample| = {gaps['train']:.4f} > 0.001")
    lab.check(gaps["eval"], 0.0, "within 1e-6: running statistics, the samples are independent",
              atol=1e-6, label="eval mode:  max |sum-grad - per-sample|")


lab.run(per_sample_trap)


# %% The end
TRIES = [
    Try("the same checks on the GPU; the times printed are the GPU's", flags="--device cuda",
        needs_cuda=True),
    Try("the same three Jacobians and checks on a 64×64 layer, and their times here",
        flags="--size 64"),
    Try("LayerNorm normalises each sample on its own: the samples stop interacting, and the "
        "train-mode gap vanishes: its check fails",
        edit=("torch.nn.BatchNorm1d(features)", "torch.nn.LayerNorm(features)"),
        where=per_sample_trap),
    Try("with zero_() instead of None, the fixed loop reuses one tensor again: every row reads "
        "as the last, and the check of fixed fails",
        edit=("x.grad = None  # the next backward", "x.grad.zero_()  # the next backward"),
        where=loop_traps),
]
lab.finish(TRIES)

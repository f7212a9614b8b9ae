"""05 · accumulation: backward() adds into .grad, so something has to reset it.

The original example (docs/original-description.ko.md, Autograd Playground §2) adds two
gradients into x.grad (2x + 3 = 7 at x = 2) and, as written, its second y2.backward() then
raises. The lesson shows that error and two fixes, the three ways to reset a gradient,
accumulation used on purpose (micro-batches), and takes up the description's question, whether
the trainer's loop diverges without .grad.zero_(), on a one-weight loss, (3w)².
"""

# %% Setup
import cmath

import torch

from tensor_features.lab import Lab, Try

lab = Lab.start("05 · accumulation", __doc__, __name__)


# %% [1] The original example, as written
# Each backward() adds its gradient into x.grad: y1 gives 2x = 4, y2 gives 3, together 7. As
# written, the example then calls y2.backward() a second time, and that raises: the first call
# freed what y2's graph had saved for its backward pass.
def original_as_written(lab: Lab) -> None:
    """The original example as written: 7, then the second y2.backward() raises"""
    x = torch.tensor(2.0, requires_grad=True)
    y1 = x**2
    y2 = 3 * x
    # For x's gradient, y2's MulBackward0 node saved the other factor, the 3, as a tensor.
    lab.check(y2.grad_fn._saved_other, 3, "the 3 of 3 * x, kept for the backward pass")
    y1.backward()
    y2.backward()  # adds 3 to the 4 already in x.grad
    lab.check(x.grad, 7.0, "2x + 3 at x = 2: the two backward calls add up")
    x.grad.zero_()
    with lab.expect_error("Trying to backward through the graph a second time",
                          "the first y2.backward() freed what y2's graph saved (the 3); "
                          "[2] keeps it"):
        y2.backward()
    lab.check(x.grad, 0.0, "zeroed, and the failed call added nothing")


lab.run(original_as_written)


# %% [2] Two fixes: keep the graph, or build it again
# retain_graph=True keeps what the graph saved, so it can be walked again; or build y2 anew,
# with its own saved 3.
def original_fixed(lab: Lab) -> None:
    """The original example, fixed: 7, then 3"""
    x = torch.tensor(2.0, requires_grad=True)
    y1 = x**2
    y2 = 3 * x
    y1.backward()
    # retain_graph=True: this backward keeps what y2's graph saved, so y2 can be walked
    # again (the next lesson, 05 retain_graph, is about it).
    y2.backward(retain_graph=True)
    lab.check(x.grad, 7.0, "2x + 3")
    x.grad.zero_()
    y2.backward()  # the second walk; this one frees the graph
    lab.check(x.grad, 3.0, "only dy2/dx = 3, after zero_()")
    x.grad.zero_()
    y2 = 3 * x  # the other fix: a new graph, with its own saved 3
    y2.backward()
    lab.check(x.grad, 3.0, "a freshly built y2 needs no retain_graph")


lab.run(original_fixed)


# %% [3] Three ways to reset, and what each leaves behind
# zero_() writes 0 into the gradient tensor itself; `.grad = None` drops it, so the next backward
# stores a new tensor; an optimizer's zero_grad() does either, for every parameter it was given.
def three_resets(lab: Lab) -> None:
    """Three resets: x.grad.zero_(), x.grad = None, optimizer.zero_grad()"""
    x = torch.tensor(2.0, requires_grad=True)
    (x**2).backward()
    held = x.grad  # a second name for the gradient tensor
    x.grad.zero_()  # in place: the same tensor, now 0
    after_zero_ = (x.grad is held, held.item())
    lab.check(after_zero_, (True, 0.0), "zero_() wrote 0 into the tensor that held also names")
    (x**2).backward()
    lab.check(held, 4.0, "the next backward adds 2x into that same tensor")
    x.grad = None  # drop it: the next backward stores a new tensor instead of adding
    (x**2).backward()
    after_none = (x.grad is held, x.grad.item(), held.item())
    lab.check(after_none, (False, 4.0, 4.0), "a new tensor holding 2x; held keeps its old 4")
    # An optimizer is given the parameters; its zero_grad() resets the .grad of each one.
    optimizer = torch.optim.SGD([x], lr=0.1)
    optimizer.zero_grad()
    after_zero_grad = x.grad
    lab.check(after_zero_grad, None, "set_to_none=True is the default: each .grad becomes None")
    (x**2).backward()
    held = x.grad
    optimizer.zero_grad(set_to_none=False)
    after_zero_grad_in_place = (x.grad is held, x.grad.item())
    lab.check(after_zero_grad_in_place, (True, 0.0),
              "set_to_none=False: the same tensor, zeroed in place")


lab.run(three_resets)


# %% [4] Accumulation on purpose: micro-batches add up to the full batch
# Accumulation is also a tool: k backward passes over k equal slices of the data, each mean loss
# divided by k, add up to one pass over all of it, while each pass keeps only its slice's tensors
# for its backward.
def saved_elements(make_loss, data: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Run make_loss() and count the elements of the tensors autograd saves for the backward
    pass: those in data's own memory (data or a view of it: a reference, no new memory), and
    the others."""
    in_data = other = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal in_data, other
        if tensor.untyped_storage().data_ptr() == data.untyped_storage().data_ptr():
            in_data += tensor.numel()
        else:
            other += tensor.numel()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = make_loss()
    return loss, in_data, other


def micro_batches(lab: Lab, k: int = 4, n: int = 8) -> None:
    """Mean-squared-error gradient: one batch of n points vs k micro-batches, each loss / k"""
    x = torch.linspace(-1.0, 1.0, n)
    y = 2 * x + 1
    w = torch.tensor(0.5, requires_grad=True)
    loss, full_in_x, full_new = saved_elements(lambda: ((w * x - y) ** 2).mean(), x)
    loss.backward()
    full_batch = w.grad.clone()
    w.grad = None
    micro_saved = []
    for xb, yb in zip(x.chunk(k), y.chunk(k)):
        # Dividing by k makes the k micro-batch means (equal chunks) add up to the full-batch
        # mean.
        loss, in_x, new = saved_elements(lambda: ((w * xb - yb) ** 2).mean() / k, x)
        loss.backward()  # adds into w.grad; frees this pass's saved tensors
        micro_saved.append((in_x, new))
    points = [-1 + 2 * i / (n - 1) for i in range(n)]
    by_hand = sum(2 * (0.5 * p - (2 * p + 1)) * p for p in points) / n  # 2/n Σ (w x - y) x
    lab.check(full_batch, by_hand, "2/n Σ (w x - y) x at w = 0.5")
    lab.check(w.grad, by_hand, f"the {k} micro-batch gradients add up to the full-batch one")
    lab.check((full_in_x, full_new), (n, n),
              "n elements in x's memory (x itself, kept by mul for w's gradient), "
              "n new ones (w x - y, kept by pow)")
    lab.check(micro_saved, [(n // k, n // k)] * k,
              f"per micro-batch pass: n/{k} in x's memory (its slice of x, a view), n/{k} new ones")
    lab.note("x is saved by reference, so it costs no memory either way; what shrinks k-fold is "
             f"w x - y,\nthe memory a pass keeps for its backward: n = {n} elements, then "
             f"n/k = {n // k}. The data x, y\n"
             "and the gradient w.grad are the same size either way.")


lab.run(micro_batches)


# %% [5] A loop that forgets to reset
# Without a reset, step k's w.grad is the sum of k gradients.
def forgotten_reset(lab: Lab, steps: int = 3) -> None:
    """A loop that never resets: loss = (3w)**2, loss.backward() each step, w fixed at 1"""
    w = torch.tensor(1.0, requires_grad=True)
    for step in range(1, steps + 1):
        loss = (3 * w) ** 2
        loss.backward()
        lab.check(w.grad, step * 18.0, f"{step} × d/dw (3w)² = {step} × 18w at w = 1",
                  label=f"step {step}: w.grad")


lab.run(forgotten_reset)


# %% [6] Stepping on the summed gradient: an oscillation while lr·18 < 4, not a divergence
# The description asks whether the trainer's loop diverges without .grad.zero_(). On
# loss = (3w)², plain SGD on the summed gradient oscillates, neither settling nor growing, while
# lr·18 < 4; with the reset it settles, but only while lr·18 < 2.
def summed_gradient_recurrence(lr_times_curvature: float, steps: int) -> list[float]:
    """w_0 .. w_steps of gradient descent on the summed gradient, from w_0 = 1, in plain floats.

    With gradient λw and g_k = λ(w_0 + ... + w_k), w_{k+1} = w_k - lr g_k. Subtracting the
    same line one step earlier: w_{k+1} = (2 - lr λ) w_k - w_{k-1}. The roots of
    r² - (2 - lr λ) r + 1 multiply to 1 and, for 0 < lr λ < 4, are complex: both lie on the
    unit circle, so w oscillates with a constant amplitude.
    """
    a = lr_times_curvature
    trajectory = [1.0, 1.0 - a]
    while len(trajectory) < steps + 1:
        trajectory.append((2 - a) * trajectory[-1] - trajectory[-2])
    return trajectory[: steps + 1]


def largest_root_size(lr_times_curvature: float) -> float:
    """|r| of the larger root of r² - (2 - lr λ) r + 1 = 0: the factor by which the
    summed-gradient run's |w| grows per step, in the long run (1 on the unit circle, for
    0 < lr λ < 4)."""
    b = 2 - lr_times_curvature
    spread = cmath.sqrt(b * b - 4)
    return max(abs((b + spread) / 2), abs((b - spread) / 2))


def summed_gradient_steps(lab: Lab, lr: float = 0.05, steps: int = 30) -> None:
    """Plain SGD on loss = (3w)**2, with and without optimizer.zero_grad() each step"""
    curvature = 18.0  # d²/dw² (3w)² = 18, so the gradient is 18w
    runs = {}
    for reset in (True, False):
        w = torch.tensor(1.0, requires_grad=True)
        optimizer = torch.optim.SGD([w], lr=lr)  # step(): w -= lr * w.grad (no momentum)
        trajectory = [w.item()]
        for _ in range(steps):
            if reset:
                optimizer.zero_grad()
            ((3 * w) ** 2).backward()
            optimizer.step()
            trajectory.append(w.item())
        runs["reset" if reset else "summed"] = trajectory
    with_reset, summed = runs["reset"], runs["summed"]
    lab.note("with zero_grad():    " + " ".join(f"{v:+.2f}" for v in with_reset[:11]) + " ...")
    lab.note("without zero_grad(): " + " ".join(f"{v:+.2f}" for v in summed[:11]) + " ...")
    factor = 1 - lr * curvature  # with the reset, each step multiplies w by 1 - lr·18
    closed_form = [factor**k for k in range(steps + 1)]
    recurrence = summed_gradient_recurrence(lr * curvature, steps)
    # The largest gap between a run and its formula over w_0 .. w_steps, as a fraction of the
    # formula's largest |w|:
    reset_gap = (max(abs(v - c) for v, c in zip(with_reset, closed_form))
                 / max(abs(c) for c in closed_form))
    summed_gap = (max(abs(v - r) for v, r in zip(summed, recurrence))
                  / max(abs(r) for r in recurrence))
    lab.check(reset_gap, 0.0, "within 1e-4: with zero_grad(), w_k = (1 - lr·18)^k = "
              f"({factor:g})^k: " + (
                  "it settles at 0" if abs(factor) < 1 else "|w| stays 1" if abs(factor) == 1
                  else f"|w| grows {abs(factor):g}× a step (it settles only while lr·18 < 2)"),
              atol=1e-4)
    lab.check(summed_gap, 0.0, "within 1e-4: without zero_grad(), w follows the summed-gradient "
              "recurrence w_k+1 = (2 - lr·18) w_k - w_k-1", atol=1e-4)
    early = max(abs(v) for v in summed[1:11])  # the largest |w| of steps 1..10
    late = max(abs(v) for v in summed[-10:])  # and of the last 10 steps
    growth_per_step = (late / early) ** (1 / (steps - 10))
    root = largest_root_size(lr * curvature)
    lab.check(growth_per_step, root, "the larger |root| of r² - (2 - lr·18) r + 1: " + (
        f"lr·18 = {lr * curvature:g} < 4, both roots on the unit circle, so no decay and no growth"
        if 0 < lr * curvature < 4 else f"lr·18 = {lr * curvature:g}, a real root of size "
        f"{root:.3g}: |w| grows {root:.3g}× a step"), rtol=0.01)


lab.run(summed_gradient_steps)


# %% The end
TRIES = [
    Try("the same values; the tensors live on the GPU", flags="--device cuda", needs_cuda=True),
    Try("each micro-batch loss is k = 4 times too large, so w.grad is 4 times the full-batch "
        "gradient: the check fails", edit=("mean() / k", "mean()"), where=micro_batches),
    Try("lr·18 = 2.7: with zero_grad() now grows, as (-1.7)^k, while without it still "
        "oscillates, bounded", edit=("lr: float = 0.05", "lr: float = 0.15"),
        where=summed_gradient_steps),
    Try("lr·18 = 4.5: both grow, with zero_grad() faster, as (-3.5)^k, than without it, "
        "2× a step",
        edit=("lr: float = 0.05", "lr: float = 0.25"), where=summed_gradient_steps),
]
lab.finish(TRIES)

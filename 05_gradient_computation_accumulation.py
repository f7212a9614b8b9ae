"""05 · gradient accumulation: .grad is a running sum, and who resets it.

backward() adds into .grad; it never overwrites. The seed's example shows it (2x + 3 = 7
at x = 2), but as written in the seed it then crashes: the second y2.backward() walks a
graph whose saved tensors were already freed. This lesson shows that failure, fixes it, and
then compares the three ways to reset (.grad.zero_(), .grad = None, optimizer.zero_grad()),
uses accumulation on purpose (micro-batches) and forgets to reset by accident.
"""

# %% Setup
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # find tensor_features when run from elsewhere

import torch

from tensor_features.lab import Lab


# %% [1] The seed's code, exactly as written
def seed_as_written(lab: Lab) -> dict:
    lab.show("x = 2; y1 = x**2; y2 = 3*x; y1.backward(); y2.backward()\n"
             "x.grad.zero_(); y2.backward()      # the seed's second call")
    x = torch.tensor(2.0, requires_grad=True, device=lab.device)
    y1 = x**2
    y2 = 3 * x
    y1.backward()
    y2.backward()  # adds 3 to the 4 already in x.grad
    first = x.grad.item()
    lab.check("x.grad", x.grad, 2 * 2 + 3, "2x + 3: the two backward calls add up")
    x.grad.zero_()
    # MulBackward0 saved its inputs to compute the gradient; the first y2.backward() freed them.
    with lab.expect_error("Trying to backward through the graph a second time",
                          "3*x saved a tensor, freed after the first backward") as caught:
        y2.backward()
    lab.check("x.grad after the failed call", x.grad, 0.0, "zeroed, and nothing was added")
    return {"first": first, "after_failure": x.grad, "error": caught.error}


# %% [2] The fixed version: prints 7, then 3
def seed_fixed(lab: Lab) -> tuple[float, float]:
    lab.show("y1.backward(); y2.backward(retain_graph=True); print(x.grad)\n"
             "x.grad.zero_(); y2.backward(); print(x.grad)")
    x = torch.tensor(2.0, requires_grad=True, device=lab.device)
    y1 = x**2
    y2 = 3 * x
    y1.backward()
    y2.backward(retain_graph=True)  # keep y2's saved tensors: we walk this graph again
    first = x.grad.item()
    lab.check("x.grad", first, 7.0, "2x + 3")
    x.grad.zero_()
    y2.backward()  # allowed once more; this call frees the graph
    second = x.grad.item()
    lab.check("x.grad", second, 3.0, "only dy2/dx = 3 after zero_()")
    lab.note("Equally good: rebuild y2 = 3 * x before the second backward; a fresh graph is cheap.")
    return first, second


# %% [3] Three ways to reset, and what each leaves behind
def three_resets(lab: Lab) -> dict:
    lab.show("x.grad.zero_()  vs  x.grad = None  vs  optimizer.zero_grad()")
    x = torch.tensor(2.0, requires_grad=True, device=lab.device)
    (x**2).backward()
    grad_before = x.grad
    x.grad.zero_()  # in place: same tensor, now 0; anyone holding it sees 0 too
    lab.check("after x.grad.zero_(): x.grad", x.grad, 0.0, "zeroed in place")
    lab.check("same tensor object as before", x.grad is grad_before, True, "zero_() writes in place")

    x.grad = None  # drop it: the next backward allocates a fresh tensor instead of adding
    lab.check("after x.grad = None: x.grad", x.grad, None, "nothing to add into")
    (x**2).backward()
    lab.check("then (x**2).backward(): x.grad", x.grad, 4.0, "2x, written, not added")

    optimizer = torch.optim.SGD([x], lr=0.1)
    optimizer.zero_grad()  # set_to_none=True is the default since PyTorch 2.0
    lab.check("after optimizer.zero_grad(): x.grad", x.grad, None, "set_to_none=True by default")
    (x**2).backward()
    optimizer.zero_grad(set_to_none=False)
    lab.check("zero_grad(set_to_none=False)", x.grad, 0.0, "the old behaviour: zeros in place")
    return {"zeroed": x.grad}


# %% [4] Accumulation on purpose: k micro-batches equal one full batch
def micro_batches(lab: Lab, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    lab.show(f"loss = mean((w*x - y)**2) over 8 points: one batch vs {k} micro-batches, each loss / {k}")
    x = torch.linspace(-1.0, 1.0, 8, device=lab.device)
    y = 2 * x + 1
    w = torch.tensor(0.5, requires_grad=True, device=lab.device)

    ((w * x - y) ** 2).mean().backward()
    full_batch = w.grad.clone()
    w.grad = None

    for xb, yb in zip(x.chunk(k), y.chunk(k)):
        # Dividing by k makes the sum of the k micro-batch means equal the full-batch mean.
        (((w * xb - yb) ** 2).mean() / k).backward()
    by_hand = (2 * (w.detach() * x - y) * x).mean()
    lab.check("full-batch w.grad", full_batch, by_hand, "2/n Σ (w x - y) x")
    lab.check(f"sum of {k} micro-batch grads", w.grad, full_batch, "same gradient, a quarter of the memory")
    return full_batch, w.grad


# %% [5] A loop that forgets to reset
def forgotten_reset(lab: Lab, steps: int = 3) -> list[float]:
    lab.show(f"for step in range({steps}): loss = (w * 3)**2; loss.backward()    # no zero_()")
    w = torch.tensor(1.0, requires_grad=True, device=lab.device)
    seen = []
    for step in range(1, steps + 1):
        loss = (w * 3) ** 2
        loss.backward()
        seen.append(w.grad.item())
        # Each step's gradient is 18; without a reset, .grad holds step * 18.
        lab.check(f"step {step}: w.grad", w.grad, step * 18.0, f"{step} x d/dw (3w)^2 = {step} x 18w")
    lab.note("An optimizer stepping on this .grad takes ever larger steps: see the trainer's --no-zero-grad.")
    return seen


# %% Run
def main(argv: list[str] | None = None) -> int:
    lab = Lab.from_argv("05 · gradient accumulation", __doc__, argv)
    seed_as_written(lab)
    seed_fixed(lab)
    three_resets(lab)
    micro_batches(lab)
    forgotten_reset(lab)
    return lab.finish([
        "--device cuda",
        "in [2], drop retain_graph=True and the second y2.backward() raises as in [1]",
        "in [4], remove the '/ k' and the micro-batch gradient becomes k times too large",
        "python -m tensor_features.train --no-zero-grad: the seed's trainer without .grad.zero_()",
    ])


if __name__ == "__main__":
    sys.exit(main())

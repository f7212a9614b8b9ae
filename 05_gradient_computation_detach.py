"""05 · detach vs no_grad vs inference_mode: three ways to step outside the graph.

detach() makes one tensor that shares storage with the original but has no history;
torch.no_grad() records nothing for a whole block; torch.inference_mode() does the same
and also marks its results as inference tensors, which autograd refuses to save later.
Sharing storage has a cost: an in-place change through a detached tensor is caught by the
version counter at backward time. The lesson ends with the update step of a training
loop, written outside no_grad the two wrong ways.
"""

# %% Setup
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # find tensor_features when run from elsewhere

import torch

from tensor_features.lab import Lab


# %% [1] The seed's example
def seed_example(lab: Lab) -> dict:
    lab.show("x = 2; y = x * 3; z = y.detach(); w = z**2\nwith torch.no_grad(): u = x**2")
    x = torch.tensor(2.0, requires_grad=True, device=lab.device)
    y = x * 3
    z = y.detach()  # same numbers as y, no grad_fn: the graph stops here
    w = z**2
    lab.check("w.requires_grad", w.requires_grad, False, "w's only input z has no history")
    lab.check("z.is_leaf, z.grad_fn", (z.is_leaf, z.grad_fn), (True, None), "detach() cuts the edge to x")
    with torch.no_grad():
        u = x**2  # x requires grad, but nothing in this block is recorded
    lab.check("u.requires_grad", u.requires_grad, False, "no_grad: no graph for the whole block")
    return {"w": w.requires_grad, "u": u.requires_grad}


# %% [2] Three ways side by side
def three_ways(lab: Lab) -> dict:
    lab.show("x.detach() * 2  |  with torch.no_grad(): x * 2  |  with torch.inference_mode(): x * 2")
    x = torch.tensor([1.0, 2.0], requires_grad=True, device=lab.device)
    detached = x.detach() * 2
    with torch.no_grad():
        no_grad = x * 2
    with torch.inference_mode():
        inference = x * 2
    lab.check("requires_grad of the three", (detached.requires_grad, no_grad.requires_grad,
              inference.requires_grad), (False, False, False), "none of them is recorded")
    lab.check("is_inference() of the three", (detached.is_inference(), no_grad.is_inference(),
              inference.is_inference()), (False, False, True), "only inference_mode marks its results")
    return {"detached": detached, "no_grad": no_grad, "inference": inference}


# %% [3] detach() shares storage, and the version counter notices writes
def detach_shares_storage(lab: Lab) -> dict:
    lab.show("y = x.exp(); z = y.detach(); z.add_(1); y.sum().backward()")
    x = torch.tensor([0.0, 1.0], requires_grad=True, device=lab.device)
    y = x.exp()  # ExpBackward0 saves its output y: d/dx exp(x) = exp(x)
    z = y.detach()
    lab.check("z.data_ptr() == y.data_ptr()", z.data_ptr() == y.data_ptr(), True,
              "detach() is a view without history, not a copy")
    z.add_(1)  # writes into y's memory too, and bumps the shared version counter
    lab.check("y after z.add_(1)", y, torch.exp(torch.tensor([0.0, 1.0])) + 1, "the same memory")
    lab.check("y._version", y._version, 1, "one in-place write through z")
    with lab.expect_error("modified by an inplace operation",
                          "exp saved y at version 0; backward finds version 1") as caught:
        y.sum().backward()
    lab.note("Fix: z = y.detach().clone() when you mean to change the copy.")
    return {"y": y, "error": caught.error}


# %% [4] Inference tensors cannot be saved for backward
def inference_tensors(lab: Lab) -> dict:
    lab.show("with torch.inference_mode(): scale = torch.ones(2) * 2\n(x * scale).sum().backward()")
    x = torch.tensor([1.0, 2.0], requires_grad=True, device=lab.device)
    with torch.inference_mode():
        scale = torch.ones(2, device=lab.device) * 2
    # x * scale must save scale for x's gradient; an inference tensor cannot be saved.
    with lab.expect_error("Inference tensors cannot be saved for backward",
                          "inference_mode skips the bookkeeping autograd needs") as caught:
        (x * scale).sum().backward()
    with torch.no_grad():
        scale = torch.ones(2, device=lab.device) * 2  # a normal tensor that merely has no history
    (x * scale).sum().backward()
    lab.check("with no_grad instead: x.grad", x.grad, [2.0, 2.0], "d/dx sum(2x) = 2")
    return {"grad": x.grad, "error": caught.error}


# %% [5] The update step outside no_grad
def update_outside_no_grad(lab: Lab, lr: float = 0.1) -> dict:
    lab.show(f"w = 1; (w * 2).backward(); w -= {lr} * w.grad        # no torch.no_grad()")
    w = torch.tensor(1.0, requires_grad=True, device=lab.device)
    (w * 2).backward()
    # Recording an in-place change of a leaf would rewrite the very value the graph started from.
    with lab.expect_error("a leaf Variable that requires grad is being used in an in-place operation",
                          "the in-place update must not be recorded") as caught:
        w -= lr * w.grad

    lab.show(f"w = w - {lr} * w.grad     # rebinding instead: no error, but ...")
    w = w - lr * w.grad  # a new tensor computed from the old leaf: recorded, so not a leaf
    lab.check("w", w, 1.0 - lr * 2, f"1 - {lr} x 2")
    lab.check("w.is_leaf, w.grad_fn", (w.is_leaf, type(w.grad_fn).__name__), (False, "SubBackward0"),
              "w is now an intermediate of the old w")
    (w * 2).backward()
    with lab.expect_warning("is not a leaf Tensor", "next epoch: w.grad of a non-leaf"):
        next_grad = w.grad
    lab.check("next epoch's w.grad", next_grad, None, "the optimiser would get nothing")
    lab.show(f"with torch.no_grad(): w -= {lr} * w.grad     # the seed's update")
    w = torch.tensor(1.0, requires_grad=True, device=lab.device)
    (w * 2).backward()
    with torch.no_grad():
        w -= lr * w.grad  # not recorded: w stays the same leaf with a new value
    lab.check("w, w.is_leaf", (w.item(), w.is_leaf), (1.0 - lr * 2, True), "updated in place, still a leaf")
    return {"w": w, "next_grad": next_grad, "error": caught.error}


# %% Run
def main(argv: list[str] | None = None) -> int:
    lab = Lab.from_argv("05 · detach / no_grad / inference_mode", __doc__, argv)
    seed_example(lab)
    three_ways(lab)
    detach_shares_storage(lab)
    inference_tensors(lab)
    update_outside_no_grad(lab)
    return lab.finish([
        "--device cuda",
        "in [3], write z = y.detach().clone(): y stays exp(x) and backward succeeds",
        "in [4], swap no_grad for inference_mode in the second block: it raises again",
        "python -m tensor_features.train --outside-no-grad: both mistakes inside the seed's loop",
    ])


if __name__ == "__main__":
    sys.exit(main())

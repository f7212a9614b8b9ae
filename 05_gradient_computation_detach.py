"""05 · detach: detach() vs torch.no_grad() vs torch.inference_mode(), three ways out of the graph.

The original example (docs/original-description.ko.md, "4. detach vs no_grad") first, then the
three ways side by side, what detach()'s shared storage costs, and the update step of the
original training loop (same file, "학습 루프 (train.py)") written outside no_grad, the two
wrong ways, and then as written.
"""

# %% Setup
import math

import torch

from tensor_features.lab import Lab, Try

lab = Lab.start("05 · detach", __doc__, __name__)


# %% [1] The original example
# detach() gives a new tensor with no history: the graph stops there. torch.no_grad() records
# nothing for a whole block. The graph of total = y + w shows where it stopped: the add leads back
# to x through y's multiply, while w, made from the detached z, adds no node and no path to x: its
# input is a None edge.
def original_example(lab: Lab) -> None:
    """The original example: z = (x * 3).detach(), w = z**2; u = x**2 inside torch.no_grad()"""
    # docs/original-description.ko.md, "4. detach vs no_grad", with checks in place of print().
    x = torch.tensor(2.0, requires_grad=True)
    y = x * 3
    z = y.detach()  # the same number as y, with no grad_fn: the graph stops here
    w = z**2
    lab.check((y.requires_grad, z.requires_grad, w.requires_grad), (True, False, False),
              "y is recorded; z has no history, so w = z**2, made from z alone, is not recorded "
              "either")
    lab.check((z.grad_fn, z.is_leaf), (None, True),
              "no edge back to x; a tensor that needs no grad counts as a leaf "
              "(docs: Tensor.is_leaf)")
    total = y + w  # the recorded branch and the detached one, added
    graph = lab.graph(total, names={"x": x, "y": y, "z": z, "w": w, "total": total})
    lab.check([node.name for node in graph.nodes],
              ["AddBackward0", "MulBackward0", "AccumulateGrad"],
              "the add, y's multiply and x's leaf; z**2 recorded no node to lead back through")
    lab.check(graph.nodes[0].inputs, ("n1", None),
              "the add's input from y leads on to x; its input from w is None: no gradient flows "
              "that way")
    with torch.no_grad():
        u = x**2  # x requires grad, but nothing in this block is recorded
    lab.check((u.requires_grad, u.grad_fn), (False, None), "no_grad: no graph for the whole block")


lab.run(original_example)


# %% [2] Three ways side by side
# None of the three records anything; torch.inference_mode() also marks its results as
# inference tensors, which autograd refuses to save later ([5]).
def three_ways(lab: Lab) -> None:
    """x * 2 three ways: x.detach() * 2, under no_grad(), under inference_mode()"""
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    detached = x.detach() * 2
    with torch.no_grad():
        no_grad = x * 2
    with torch.inference_mode():
        inference = x * 2
    lab.check((detached.requires_grad, no_grad.requires_grad, inference.requires_grad),
              (False, False, False), "none of the three products is recorded")
    lab.check((detached.is_inference(), no_grad.is_inference(), inference.is_inference()),
              (False, False, True), "only inference_mode marks its results as inference tensors")


lab.run(three_ways)


# %% [3] detach() shares storage and the version counter
# detach() gives a tensor that shares the original's storage and its version counter: not a
# copy, and, though the docs list it among the view ops, not a view in autograd's sense (no
# ._base). The shared storage has a cost: an in-place write through a detached tensor changes
# the original too. Autograd saved the original for backward here (exp does), so the shared
# version counter makes backward raise. The graph read after the write shows it before backward
# does: exp's saved result is marked modified in place, though the write went through z.
def detach_shares_storage(lab: Lab) -> None:
    """z.add_(1) on z, the detach() of y = x.exp(); then backward through the exp"""
    x = torch.tensor([0.0, 1.0], requires_grad=True)
    y = x.exp()  # ExpBackward0 saves its result y: d/dx exp(x) = exp(x)
    z = y.detach()
    # docs, torch.Tensor.detach: "Returned Tensor shares the same storage with the original one."
    same_storage = z.untyped_storage().data_ptr() == y.untyped_storage().data_ptr()
    lab.check(same_storage, True, "no copy: z reads y's memory")
    # docs/source/tensor_view.rst lists detach() among the view ops (it shares memory), but
    # autograd does not track z as a view of y: no ._base.
    lab.check((z._is_view(), z._base), (False, None),
              "not a view in autograd's sense: no link back to y")
    z.add_(1)  # writes into y's memory, and bumps the version counter z shares with y
    lab.check(y, [math.exp(0.0) + 1, math.exp(1.0) + 1],
              "exp(x) + 1: the write through z changed y")
    lab.check((y._version, z._version), (1, 1), "one counter for both: one in-place write")
    graph = lab.graph(y, names={"x": x, "y": y, "z": z})
    lab.check([(saved.slot, saved.state) for saved in graph.nodes[0].saved],
              [("result", "modified in place")],
              "exp saved y at version 0; the write through z moved the counter z shares with y")
    with lab.expect_error("modified by an inplace operation",
                          "ExpBackward0 saved y at version 0; backward finds version 1"):
        y.sum().backward()


lab.run(detach_shares_storage)


# %% [4] The same write when backward saved nothing of y: no error
# If autograd did not save the original for backward, the same write through the detached
# tensor goes unnoticed: nothing complains.
def write_nobody_saved(lab: Lab) -> None:
    """
    z.add_(1) on z, the detach() of y = x * 3; then backward: the same write, and nothing complains
    """
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3  # MulBackward0 saves only the 3 (d(3x)/dx = 3); y.sum() saves only y's shape
    z = y.detach()  # shares y's storage and version counter, as in [3]
    z.add_(1)  # y changes and its version goes to 1, as in [3]
    y.sum().backward()  # no node saved y, so no node compares its version: no error
    lab.check(x.grad, [3.0, 3.0], "d/dx sum(3x) = 3: backward ran, and its gradient is right")
    lab.check((y, y._version), ([1.0 * 3 + 1, 2.0 * 3 + 1], 1),
              "but y is no longer x * 3: the write through z changed it silently")


lab.run(write_nobody_saved)


# %% [5] Inference tensors cannot be saved for backward
# A tensor made inside torch.inference_mode() is an inference tensor ([2]), and autograd refuses
# to save one for backward.
def inference_tensors(lab: Lab) -> None:
    """A scale made under inference_mode, then used with a tensor that requires grad"""
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    with torch.inference_mode():
        scale = torch.ones(2) * 2
    # x * scale must save scale for x's gradient (d/dx (x * scale) = scale).
    with lab.expect_error("Inference tensors cannot be saved for backward",
                          "the multiplication itself raises: it cannot save the inference "
                          "tensor scale"):
        product = x * scale
    with torch.no_grad():
        scale = torch.ones(2) * 2  # the message's second way: a normal tensor, no history
    product = x * scale
    product.sum().backward()
    lab.check(x.grad, [2.0, 2.0], "d/dx sum(2x) = 2")


lab.run(inference_tensors)


# %% [6] The update in place, outside no_grad
# The update step of the original training loop (docs/original-description.ko.md, "학습 루프
# (train.py)"), written outside no_grad: the first of the two wrong ways.
def update_in_place_outside_no_grad(lab: Lab, lr: float = 0.1) -> None:
    """w -= lr * w.grad without torch.no_grad()"""
    w = torch.tensor(1.0, requires_grad=True)
    (w * 2).backward()
    with lab.expect_error("a leaf Variable that requires grad is being used in an in-place "
                          "operation",
                          "outside no_grad the update would be recorded on the leaf w itself, "
                          "and autograd refuses"):
        w -= lr * w.grad
    lab.check(w, 1.0, "refused: w keeps its value")


lab.run(update_in_place_outside_no_grad)


# %% [7] The update by rebinding, outside no_grad
# The second wrong way: w = w - lr * w.grad outside no_grad raises nothing, but w now names a
# non-leaf recorded from the old leaf, so the next update finds no w.grad.
def update_by_rebinding(lab: Lab, lr: float = 0.1) -> None:
    """w = w - lr * w.grad without torch.no_grad(): no error, but ..."""
    w = torch.tensor(1.0, requires_grad=True)
    first_w = w
    (w * 2).backward()
    w = w - lr * w.grad  # a new tensor computed from the old leaf, and recorded
    lab.check((w.item(), w.is_leaf, type(w.grad_fn).__name__),
              (1.0 - lr * 2, False, "SubBackward0"),
              f"1 - {lr} × 2, but w now names a non-leaf computed from first_w")
    (w * 2).backward()  # the next epoch's backward
    lab.check(first_w.grad, 4.0, "2 + 2: the gradient went through the new w to the old leaf")
    with lab.expect_warning("is not a leaf Tensor",
                            "the new w is not a leaf; the leaf the message means is first_w"):
        next_grad = w.grad
    lab.check(next_grad, None, "so the next update has no w.grad to use")


lab.run(update_by_rebinding)


# %% [8] The original training loop's update: in place, inside no_grad
# The update as the original training loop writes it: in place, inside torch.no_grad(), so w
# stays the same leaf.
def update_inside_no_grad(lab: Lab, lr: float = 0.1) -> None:
    """with torch.no_grad(): w -= lr * w.grad, the update of the original training loop"""
    # docs/original-description.ko.md, "학습 루프 (train.py)": its update step, on a scalar w.
    w = torch.tensor(1.0, requires_grad=True)
    first_w = w
    (w * 2).backward()
    with torch.no_grad():
        w -= lr * w.grad  # not recorded: w stays the same leaf, with a new value
    lab.check((w.item(), w.is_leaf, w is first_w), (1.0 - lr * 2, True, True),
              f"1 - {lr} × 2, updated in place: still the same leaf")


lab.run(update_inside_no_grad)


# %% The end
TRIES = [
    Try("the same values; the tensors live on the GPU", flags="--device cuda", needs_cuda=True),
    Try("z keeps x's history, so w is recorded too, and the checks of [1] that expect no history "
        "fail", edit=("z = y.detach()", "z = y"), where=original_example),
    Try("z is a copy: y keeps exp(x), and backward goes through (the checks that expect sharing "
        "fail)", edit=("z = y.detach()", "z = y.detach().clone()"), where=detach_shares_storage),
]
lab.finish(TRIES)

"""05 detach: every value the lesson returns, against an oracle written here: the products and
exponentials by hand, one shared storage and version counter, the errors by their stable
substrings, the silent write checked against 3x + 1, and the three updates replayed in plain floats."""

import math

import pytest
import torch

from tests.support import Promise, assert_caught, load_lesson

lesson = load_lesson("05_gradient_computation_detach.py")

# The lesson's Try lines, in order: the exit code and the text each adds to the output.
TRY_PROMISES = [
    Promise(shows=("device cuda",)),
    Promise(exit=1, shows=("FAIL  (y.requires_grad, z.requires_grad, w.requires_grad) = (True, True, True)",)),
    Promise(exit=1, shows=("FAIL  same_storage = False", "FAIL  no error")),
]

MUTANTS = [
    ("05_gradient_computation_detach.py", "    z = y.detach()  # the same number", "    z = y  # the same number"),
    ("05_gradient_computation_detach.py", "    z = y.detach()\n    # docs, torch.Tensor.detach",
     "    z = y.detach().clone()\n    # docs, torch.Tensor.detach"),
    ("05_gradient_computation_detach.py", "    z = y.detach()\n    z.add_(1)  # y changes",
     "    z = y.detach().clone()\n    z.add_(1)  # y changes"),
    ("05_gradient_computation_detach.py", "    y = x * 3  # MulBackward0", "    y = x * 2  # MulBackward0"),
    ("05_gradient_computation_detach.py", "    with torch.inference_mode():\n        inference = x * 2",
     "    with torch.no_grad():\n        inference = x * 2"),
    ("05_gradient_computation_detach.py", "    y = x.exp()  #", "    y = x.exp() * 1  #"),
    ("05_gradient_computation_detach.py", "    with torch.no_grad():\n        scale = torch.ones(2, device=lab.device) * 2",
     "    if True:\n        scale = torch.ones(2, device=lab.device) * 3"),
    ("05_gradient_computation_detach.py", "    w = w - lr * w.grad  #", "    w = w.detach() - lr * w.grad  #"),
    ("05_gradient_computation_detach.py", "    with torch.no_grad():\n        w -= lr * w.grad",
     "    with torch.no_grad():\n        w = w - lr * w.grad"),
]

# Written by a tester who had not read these tests, from the lessons and the package alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # ---------------------------------------------------------------- 05 detach
    # original_example(): w computed from y instead of z: w.requires_grad True
    ('05_gradient_computation_detach.py', '    w = z**2\n', '    w = y**2\n'),
    # detach_shares_storage(): out-of-place add: y untouched, versions (0, 0), no error
    ('05_gradient_computation_detach.py', "    z.add_(1)  # writes into y's memory", "    z = z + 1  # writes into y's memory"),
    # update_inside_no_grad(): rebinding under no_grad: w is a new leaf, not the same object
    ('05_gradient_computation_detach.py', '        w -= lr * w.grad  # not recorded', '        w = w - lr * w.grad  # not recorded'),
    # three_ways(): inference_mode where no_grad was meant: no_grad result is an inference tensor
    ('05_gradient_computation_detach.py', '    with torch.no_grad():\n        no_grad = x * 2', '    with torch.inference_mode():\n        no_grad = x * 2'),
]


def test_original_example(lab):
    seen = lesson.original_example(lab)
    assert (seen["y"], seen["z"], seen["w"], seen["u"]) == (True, False, False, False)
    assert seen["z.grad_fn"] is None
    x = 2.0
    assert seen["values"] == (pytest.approx(3 * x), pytest.approx((3 * x) ** 2), pytest.approx(x**2))


def test_three_ways(lab):
    seen = lesson.three_ways(lab)
    assert [t.requires_grad for t in seen.values()] == [False, False, False]
    assert [t.is_inference() for t in seen.values()] == [False, False, True]
    for name, product in seen.items():
        assert product.cpu().tolist() == [2.0, 4.0], name  # 2 · [1, 2]


def test_detach_shares_storage_and_the_version_counter(lab):
    seen = lesson.detach_shares_storage(lab)
    assert seen["same_storage"] is True
    assert seen["y"].detach().cpu().tolist() == pytest.approx([math.exp(0) + 1, math.exp(1) + 1])
    assert seen["versions"] == (1, 1)  # one add_, counted once, seen by both
    assert_caught(seen["error"], RuntimeError, "modified by an inplace operation")


def test_a_write_nobody_saved_changes_y_silently(lab):
    seen = lesson.write_nobody_saved(lab)
    x = [1.0, 2.0]
    assert seen["x.grad"].cpu().tolist() == [3.0, 3.0]  # d/dx Σ 3x
    assert seen["y"].detach().cpu().tolist() == [3 * v + 1 for v in x]  # 3x, then the add_(1) through z
    assert seen["version"] == 1


def test_mul_by_a_constant_and_sum_save_nothing_of_y():
    """Backs [4]'s comments: MulBackward0 of x * 3 saves only the 3, SumBackward0 only a shape."""
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3
    assert y.grad_fn._saved_self is None and y.grad_fn._saved_other.item() == 3
    saved = [name for name in dir(y.sum().grad_fn) if name.startswith("_saved")]
    assert saved == ["_saved_self_sym_sizes"]


def test_inference_tensors_cannot_be_saved(lab):
    seen = lesson.inference_tensors(lab)
    assert_caught(seen["error"], RuntimeError, "Inference tensors cannot be saved for backward")
    assert seen["grad"].cpu().tolist() == [2.0, 2.0]  # d/dx Σ 2x, once


@pytest.mark.parametrize("lr", [0.1, 0.25])
def test_the_three_updates(lab, lr):
    refused = lesson.update_in_place_outside_no_grad(lab, lr=lr)
    assert_caught(refused["error"], RuntimeError, "a leaf Variable that requires grad is being used in an in-place operation")
    assert refused["w"] == 1.0

    rebound = lesson.update_by_rebinding(lab, lr=lr)
    assert rebound["w"] == pytest.approx(1.0 - lr * 2)  # w - lr · d/dw (2w)
    assert rebound["first_w.grad"] == pytest.approx(2.0 + 2.0)  # d(2w)/dw, then d(2(w - c))/dw
    assert rebound["next_grad"] is None

    updated = lesson.update_inside_no_grad(lab, lr=lr)
    assert updated == {"w": pytest.approx(1.0 - lr * 2), "is_leaf": True, "same_object": True}

"""05 detach: every value the lesson's checks saw (and the locals its observations left), against
an oracle written here: the products and exponentials by hand, one shared storage and version
counter, the errors by their stable substrings, the silent write checked against 3x + 1, and the
three updates replayed in plain floats. TRY_PROMISES: what each of the lesson's Try lines does
(tests/lab/test_tries.py)."""

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
    ("05_gradient_computation_detach.py", "    z = y.detach()  # shares y's storage",
     "    z = y.detach().clone()  # shares y's storage"),
    ("05_gradient_computation_detach.py", "    y = x * 3  # MulBackward0", "    y = x * 2  # MulBackward0"),
    ("05_gradient_computation_detach.py", "    with torch.inference_mode():\n        inference = x * 2",
     "    with torch.no_grad():\n        inference = x * 2"),
    ("05_gradient_computation_detach.py", "    y = x.exp()  #", "    y = x.exp() * 1  #"),
    ("05_gradient_computation_detach.py", "    with torch.no_grad():\n        scale = torch.ones(2) * 2",
     "    if True:\n        scale = torch.ones(2) * 3"),
    ("05_gradient_computation_detach.py", "    w = w - lr * w.grad  #", "    w = w.detach() - lr * w.grad  #"),
    ("05_gradient_computation_detach.py", "    with torch.no_grad():\n        w -= lr * w.grad",
     "    with torch.no_grad():\n        w = w - lr * w.grad"),
    # [1]: the second term recorded from x; [3]: the graph of another tensor than y
    ("05_gradient_computation_detach.py",
     "    total = y + w  # the", "    total = y + x**2  # the"),
    ("05_gradient_computation_detach.py",
     '    graph = lab.graph(y, names={"x": x, "y": y, "z": z})',
     '    graph = lab.graph(y * 1, names={"x": x, "y": y, "z": z})'),
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
    seen = lab.run(lesson.original_example)
    assert seen["(y.requires_grad, z.requires_grad, w.requires_grad)"] == (True, False, False)
    assert seen["(u.requires_grad, u.grad_fn)"] == (False, None)
    assert seen["(z.grad_fn, z.is_leaf)"] == (None, True)
    names = seen.names
    assert (names["y"].requires_grad, names["z"].requires_grad, names["w"].requires_grad,
            names["u"].requires_grad) == (True, False, False, False)
    assert names["z"].grad_fn is None
    x = 2.0
    values = (names["z"].item(), names["w"].item(), names["u"].item())
    assert values == (pytest.approx(3 * x), pytest.approx((3 * x) ** 2), pytest.approx(x**2))
    # The reading of total = y + w: torch's own nodes, walked here, lead to x through y only.
    assert seen["[node.name for node in graph.nodes]"] == [
        "AddBackward0", "MulBackward0", "AccumulateGrad"]
    assert seen["graph.nodes[0].inputs"] == ("n1", None)
    (mul, _), (from_w, _) = names["total"].grad_fn.next_functions
    assert mul is names["y"].grad_fn and from_w is None and names["w"].grad_fn is None
    assert mul.next_functions[0][0].variable is names["x"] and mul.next_functions[1][0] is None
    # The tree, by hand: total = 3x + (3x)² = 6 + 36 at x = 2; mul keeps the 3, an int64 number.
    assert seen["graph"].splitlines() == [
        "output total (shape (), float32, 4 bytes, value 42.0)",
        "  n0 AddBackward0",
        "    n1 MulBackward0  saved other (shape (), int64, 8 bytes, value 3)",
        "      n2 AccumulateGrad  leaf x (shape (), float32, 4 bytes, value 2.0), grad None",
        "      None  (needs no gradient)",
        "    None  (needs no gradient)"]


def test_three_ways(lab):
    seen = lab.run(lesson.three_ways)
    products = {name: seen.names[name] for name in ("detached", "no_grad", "inference")}
    assert [t.requires_grad for t in products.values()] == [False, False, False]
    assert [t.is_inference() for t in products.values()] == [False, False, True]
    for name, product in products.items():
        assert product.cpu().tolist() == [2.0, 4.0], name  # 2 · [1, 2]


def test_detach_shares_storage_and_the_version_counter(lab):
    seen = lab.run(lesson.detach_shares_storage)
    assert seen["same_storage"] is True
    assert seen["y"].cpu().tolist() == pytest.approx([math.exp(0) + 1, math.exp(1) + 1])
    assert seen["(y._version, z._version)"] == (1, 1)  # one add_, counted once, seen by both
    assert seen["(z._is_view(), z._base)"] == (False, None)
    assert_caught(seen["error"], RuntimeError, "modified by an inplace operation")
    # The reading after the write: exp's one saved tensor, its result, is stale.
    assert seen["[(saved.slot, saved.state) for saved in graph.nodes[0].saved]"] == [
        ("result", "modified in place")]
    assert seen["graph"].splitlines()[1] == "  n0 ExpBackward0  saved result (modified in place)"
    # torch's own node, read directly, says the same; the leaf x itself was never written.
    y, x = seen.names["y"], seen.names["x"]
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.grad_fn._saved_result  # noqa: B018
    assert y.grad_fn.next_functions[0][0].variable is x and x._version == 0


def test_a_write_nobody_saved_changes_y_silently(lab):
    seen = lab.run(lesson.write_nobody_saved)
    x = [1.0, 2.0]
    assert seen["x.grad"].cpu().tolist() == [3.0, 3.0]  # d/dx Σ 3x
    y, version = seen["(y, y._version)"]
    assert y.cpu().tolist() == [3 * v + 1 for v in x]  # 3x, then the add_(1) through z
    assert version == 1


def test_mul_by_a_constant_and_sum_save_nothing_of_y():
    """Backs [4]'s comments: MulBackward0 of x * 3 saves only the 3, SumBackward0 only a shape."""
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3
    assert y.grad_fn._saved_self is None and y.grad_fn._saved_other.item() == 3
    saved = [name for name in dir(y.sum().grad_fn) if name.startswith("_saved")]
    assert saved == ["_saved_self_sym_sizes"]


def test_inference_tensors_cannot_be_saved(lab):
    seen = lab.run(lesson.inference_tensors)
    assert_caught(seen["error"], RuntimeError, "Inference tensors cannot be saved for backward")
    assert seen["x.grad"].cpu().tolist() == [2.0, 2.0]  # d/dx Σ 2x, once


@pytest.mark.parametrize("lr", [0.1, 0.25])
def test_the_three_updates(lab, lr):
    refused = lab.run(lesson.update_in_place_outside_no_grad, lr=lr)
    assert_caught(refused["error"], RuntimeError,
                  "a leaf Variable that requires grad is being used in an in-place operation")
    assert refused["w"].item() == 1.0

    rebound = lab.run(lesson.update_by_rebinding, lr=lr)
    assert rebound.names["w"].item() == pytest.approx(1.0 - lr * 2)  # w - lr · d/dw (2w)
    assert rebound.names["w"].is_leaf is False
    assert rebound["first_w.grad"].item() == pytest.approx(2.0 + 2.0)  # d(2w)/dw, then d(2(w - c))/dw
    assert rebound["next_grad"] is None
    assert any("is not a leaf Tensor" in w for w in rebound["warnings"])

    updated = lab.run(lesson.update_inside_no_grad, lr=lr)
    assert updated["(w.item(), w.is_leaf, w is first_w)"] == (pytest.approx(1.0 - lr * 2), True, True)
    assert updated.names["w"] is updated.names["first_w"]
    assert updated.names["w"].item() == pytest.approx(1.0 - lr * 2)

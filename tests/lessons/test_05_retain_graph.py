"""05 retain_graph: every value the lesson returns, against an oracle written here: 3x² and 6x by
hand, gradgradcheck, the saved tensors each node needs (from its derivative formula), and the
errors by their stable substrings."""

import pytest
import torch

from tests.support import Promise, assert_caught, load_lesson, playground_section

lesson = load_lesson("05_gradient_computation_retain_graph.py")

# The lesson's Try lines, in order: the exit code and the text each adds to the output.
TRY_PROMISES = [
    Promise(shows=("device cuda",)),
    Promise(exit=1, shows=("FAIL  call 2: x.grad = 12.0",)),
    Promise(exit=1, shows=("FAIL  no error", "FAIL  x.grad = 24.0")),
]

MUTANTS = [
    ("05_gradient_computation_retain_graph.py", "        y.backward(retain_graph=True)  # keep",
     "        x.grad = None\n        y.backward(retain_graph=True)  # keep"),
    ("05_gradient_computation_retain_graph.py", "    y.backward(retain_graph=False)  # the default",
     "    y.backward(retain_graph=True)  # the default"),
    ("05_gradient_computation_retain_graph.py", "    y.backward(retain_graph=False)  # the default",
     "    y.backward(create_graph=True)  # the default"),
    ("05_gradient_computation_retain_graph.py", "next call\" if call == 1 else", "next call\" if call <= 2 else"),
    ("05_gradient_computation_retain_graph.py", "    y = x + 1\n", "    y = x * 1.0\n"),
    ("05_gradient_computation_retain_graph.py", "    y.backward()  # no error: no saved tensor to free\n", ""),
    ("05_gradient_computation_retain_graph.py", 'name.startswith("_saved_") and isinstance', 'name.startswith("_saved_") or isinstance'),
    ("05_gradient_computation_retain_graph.py", "    (d2y,) = torch.autograd.grad(dy, x)", "    (d2y,) = torch.autograd.grad(dy, x, create_graph=True)\n    y.backward()"),
    ("05_gradient_computation_retain_graph.py", "(dy,) = torch.autograd.grad(y, x, create_graph=True)",
     "(dy,) = torch.autograd.grad(y**2, x, create_graph=True)"),
]

# Written by a tester who had not read these tests, from the lessons and the package alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # ---------------------------------------------------------------- 05 retain_graph
    # original_loop(): off-by-one range: three calls, printed [12, 24, 36]
    ('05_gradient_computation_retain_graph.py', 'for call in range(1, 3):', 'for call in range(1, 4):'),
    # second_derivative(): create_graph on the first grad: plain requires grad and the expected error never comes
    ('05_gradient_computation_retain_graph.py', '(plain,) = torch.autograd.grad(y, x)  # a tensor', '(plain,) = torch.autograd.grad(y, x, create_graph=True)  # a tensor'),
    # what_backward_frees(): retain_graph flipped to True: nothing freed, second backward works, grad 24
    ('05_gradient_computation_retain_graph.py', 'y.backward(retain_graph=False)  # the default', 'y.backward(retain_graph=True)  # the default'),
    # nothing_saved(): the second y.backward() is preceded by a reset: x.grad = 1 not 2
    ('05_gradient_computation_retain_graph.py', '    y.backward()\n    y.backward()  # no error', '    y.backward()\n    x.grad = None\n    y.backward()  # no error'),
]


def test_original_loop_accumulates_12_then_24(lab):
    x = 2.0
    assert lesson.original_loop(lab) == [pytest.approx(3 * x**2), pytest.approx(2 * 3 * x**2)]
    printed = lab.stream.getvalue()
    assert printed.count("into an empty .grad") == 1 and printed.count(".grad added to what it held") == 1


def test_the_original_loop_is_in_the_original_description():
    """The docstring's pointer: docs/original-description.ko.md, Autograd Playground §3, has this loop."""
    assert "docs/original-description.ko.md, Autograd Playground §3" in " ".join(lesson.__doc__.split())
    section = playground_section(3)
    assert "y = x ** 3" in section and "for _ in range(2):" in section
    assert "    y.backward(retain_graph=True)\n    print(x.grad)" in section


def test_backward_frees_the_saved_x(lab):
    seen = lesson.what_backward_frees(lab)
    assert seen["grad"] == pytest.approx(3 * 2.0**2)  # once, not twice
    assert seen["x"].item() == 2.0 and seen["x"].is_leaf  # the leaf itself, as it was made
    assert_caught(seen["read_error"], RuntimeError, "after they have already been freed")
    assert_caught(seen["backward_error"], RuntimeError, "Trying to backward through the graph a second time")


def test_graph_without_saved_tensors_doubles_silently(lab):
    seen = lesson.nothing_saved(lab)
    assert seen["x.grad"].item() == 2.0  # d/dx (x + 1) = 1, twice
    assert seen["v.grad"].cpu().tolist() == [2.0, 2.0, 2.0]  # d/dv sum(v) = ones, twice
    # d(x + 1) and d sum(v) use no forward value; d x³ = 3x² uses x (its `self`).
    assert seen["saved"] == {"add": [], "sum": [], "pow": ["_saved_self"]}


def test_saved_tensor_names_reads_real_nodes():
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    b = torch.tensor([3.0, 4.0], requires_grad=True)
    assert lesson.saved_tensor_names((a * b).grad_fn) == ["_saved_other", "_saved_self"]  # d(ab) = b da + a db
    assert lesson.saved_tensor_names(a.exp().grad_fn) == ["_saved_result"]  # d exp(a) = exp(a) da
    assert lesson.saved_tensor_names((a - b).grad_fn) == []


def test_second_derivative_matches_analytic_and_gradgradcheck(lab):
    seen = lesson.second_derivative(lab)
    x = 2.0
    assert seen["plain"].item() == pytest.approx(3 * x**2) and not seen["plain"].requires_grad
    assert seen["dy"].item() == pytest.approx(3 * x**2) and seen["dy"].grad_fn is not None
    assert seen["d2y"].item() == pytest.approx(6 * x)
    assert seen["x.grad"].item() == pytest.approx(3 * x**2)  # only the final y.backward() wrote it
    assert_caught(seen["error"], RuntimeError, "element 0 of tensors does not require grad")
    t = torch.tensor([2.0, -0.7], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda v: v**3, (t,))

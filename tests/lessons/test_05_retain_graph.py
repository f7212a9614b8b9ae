"""05 retain_graph: every value the lesson's checks saw (and the locals its observations left),
against an oracle written here: 3x² and 6x by hand, gradgradcheck, the saved tensors each node
needs (from its derivative formula), and the errors by their stable substrings. TRY_PROMISES: what
each of the lesson's Try lines does (tests/lab/test_tries.py)."""

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
    ("05_gradient_computation_retain_graph.py", "if call == 1 else", "if call <= 2 else"),
    ("05_gradient_computation_retain_graph.py", "    y = x + 1\n", "    y = x * 1.0\n"),
    ("05_gradient_computation_retain_graph.py", "    y.backward()  # no error: no saved tensor to free\n", ""),
    ("05_gradient_computation_retain_graph.py", 'name.startswith("_saved_") and isinstance', 'name.startswith("_saved_") or isinstance'),
    ("05_gradient_computation_retain_graph.py", "    (d2y,) = torch.autograd.grad(dy, x)", "    (d2y,) = torch.autograd.grad(dy, x, create_graph=True)\n    y.backward()"),
    ("05_gradient_computation_retain_graph.py", "(dy,) = torch.autograd.grad(y, x, create_graph=True)",
     "(dy,) = torch.autograd.grad(y**2, x, create_graph=True)"),
    # [1]/[2]: the graph read at the wrong moment, or x not named
    ("05_gradient_computation_retain_graph.py",
     ('    y.backward(retain_graph=False)  # the default (docs: Tensor.backward): '
      'free what the graph saved\n'
      '    lab.check(x.grad, 12.0, "3x² at x = 2")\n'
      '    graph = lab.graph(y, names={"x": x, "y": y})\n'),
     ('    graph = lab.graph(y, names={"x": x, "y": y})\n'
      '    y.backward(retain_graph=False)  # the default (docs: Tensor.backward): '
      'free what the graph saved\n'
      '    lab.check(x.grad, 12.0, "3x² at x = 2")\n')),
    ("05_gradient_computation_retain_graph.py",
     "        y.backward(retain_graph=True)  # keep what",
     "        y.backward(retain_graph=call == 1)  # keep what"),
    ("05_gradient_computation_retain_graph.py",
     '    graph = lab.graph(y, names={"x": x, "y": y})\n    lab.check([(saved.slot, saved.state, s',
     ('    graph = lab.graph(y, names={"x": x.detach(), "y": y})\n'
      '    lab.check([(saved.slot, saved.state, s')),
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
    seen = lab.run(lesson.original_loop)
    assert [seen[f"call {call}: x.grad"].item() for call in (1, 2)] == [
        pytest.approx(3 * x**2), pytest.approx(2 * 3 * x**2)]
    printed = lab.stream.getvalue()
    assert printed.count("into an empty .grad") == 1 and printed.count(".grad added to what it held") == 1
    # The reading after both calls: pow's one saved tensor, still held, is x itself.
    label = "[(saved.slot, saved.state, saved.tensor.name) for saved in graph.nodes[0].saved]"
    assert seen[label] == [("self", "held", "x")]
    # torch's own node, read directly: retain_graph=True left the saved x readable, x itself.
    leaf, y = seen.names["x"], seen.names["y"]
    assert y.grad_fn._saved_self is leaf and y.grad_fn.next_functions[0][0].variable is leaf
    # The tree, written by hand: y = 2³, pow keeps x = 2, and x's leaf holds 2 × 3·2² = 24.
    assert seen["graph"].splitlines() == [
        "output y (shape (), float32, 4 bytes, value 8.0)",
        "  n0 PowBackward0  saved self = x (shape (), float32, 4 bytes, value 2.0)",
        "    n1 AccumulateGrad  leaf x (shape (), float32, 4 bytes, value 2.0), grad 24.0"]


def test_the_original_loop_is_in_the_original_description():
    """The docstring's pointer: docs/original-description.ko.md, Autograd Playground §3, has this loop."""
    assert "docs/original-description.ko.md, Autograd Playground §3" in " ".join(lesson.__doc__.split())
    section = playground_section(3)
    assert "y = x ** 3" in section and "for _ in range(2):" in section
    assert "    y.backward(retain_graph=True)\n    print(x.grad)" in section


def test_backward_frees_the_saved_x(lab):
    seen = lab.run(lesson.what_backward_frees)
    assert seen["y.grad_fn._saved_self is x"] is True  # d x³ = 3x² dx needs x: pow saved x itself
    # 3x² after the first backward, and still once, not twice, after the failed second one
    assert [g.item() for g in seen.every("x.grad")] == [pytest.approx(3 * 2.0**2)] * 2
    assert seen["x"].item() == 2.0  # untouched
    x = seen.names["x"]
    assert x.item() == 2.0 and x.is_leaf and x.requires_grad  # the leaf itself, as it was made
    read_error, backward_error = seen.every("error")
    assert_caught(read_error, RuntimeError, "after they have already been freed")
    assert_caught(backward_error, RuntimeError, "Trying to backward through the graph a second time")
    # The reading just after backward(): the same node, its saved x freed; x's grad 3·2² = 12.
    assert seen["[(saved.slot, saved.state) for saved in graph.nodes[0].saved]"] == [
        ("self", "freed")]
    assert seen["graph"].splitlines() == [
        "output y (shape (), float32, 4 bytes, value 8.0)",
        "  n0 PowBackward0  saved self (freed)",
        "    n1 AccumulateGrad  leaf x (shape (), float32, 4 bytes, value 2.0), grad 12.0"]
    # torch's own node, read directly, says the same: reading the saved x raises.
    with pytest.raises(RuntimeError, match="after they have already been freed"):
        seen.names["y"].grad_fn._saved_self  # noqa: B018


def test_graph_without_saved_tensors_doubles_silently(lab):
    seen = lab.run(lesson.nothing_saved)
    assert seen["x.grad"].item() == 2.0  # d/dx (x + 1) = 1, twice
    assert seen["v.grad"].cpu().tolist() == [2.0, 2.0, 2.0]  # d/dv sum(v) = ones, twice
    # d(x + 1) and d sum(v) use no forward value; d x³ = 3x² uses x (its `self`).
    assert {name: seen.names[f"{name}_saved"] for name in ("add", "sum", "pow")} == {
        "add": [], "sum": [], "pow": ["_saved_self"]}
    assert seen["(sum_saved, list(s.grad_fn._saved_self_sym_sizes))"] == ([], [3])  # v's shape


def test_saved_tensor_names_reads_real_nodes():
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    b = torch.tensor([3.0, 4.0], requires_grad=True)
    assert lesson.saved_tensor_names((a * b).grad_fn) == ["_saved_other", "_saved_self"]  # d(ab) = b da + a db
    assert lesson.saved_tensor_names(a.exp().grad_fn) == ["_saved_result"]  # d exp(a) = exp(a) da
    assert lesson.saved_tensor_names((a - b).grad_fn) == []


def test_second_derivative_matches_analytic_and_gradgradcheck(lab):
    seen = lab.run(lesson.second_derivative)
    x = 2.0
    plain, dy = seen.names["plain"], seen.names["dy"]
    assert plain.item() == pytest.approx(3 * x**2) and not plain.requires_grad
    assert seen["(plain, plain.requires_grad)"][1] is False
    assert dy.item() == pytest.approx(3 * x**2) and dy.grad_fn is not None
    assert seen["(dy, dy.grad_fn is not None)"][1] is True
    assert seen["d2y"].item() == pytest.approx(6 * x)
    # autograd.grad left .grad alone; only the final y.backward() wrote it
    before, after = seen.every("x.grad")
    assert before is None and after.item() == pytest.approx(3 * x**2)
    assert_caught(seen["error"], RuntimeError, "element 0 of tensors does not require grad")
    t = torch.tensor([2.0, -0.7], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda v: v**3, (t,))

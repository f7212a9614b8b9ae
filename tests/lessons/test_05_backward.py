"""05 backward: every value the lesson's checks saw (and the locals its observations left),
against an oracle written here: the analytic derivative, gradcheck, float64 finite differences,
and the graph of y = x**2 + 2x by hand. TRY_PROMISES: what each of the lesson's Try lines does
(tests/lab/test_tries.py)."""

import math

import pytest
import torch

from tests.support import Promise, assert_caught, load_lesson, playground_section

lesson = load_lesson("05_gradient_computation_backward.py")

# The lesson's Try lines, in order: the exit code and the text each adds to the output.
TRY_PROMISES = [
    Promise(shows=("device cuda",)),
    Promise(exit=1, shows=("FAIL  h.grad = None",)),
    Promise(exit=1, shows=("FAIL  names = [AddBackward0, PowBackward0, AccumulateGrad, MulBackward0, "
                           "AccumulateGrad, AccumulateGrad]",)),
]

MUTANTS = [
    ("05_gradient_computation_backward.py", "    y = x**2 + 2 * x\n    # y is a scalar", "    y = x**2 + 3 * x\n    # y is a scalar"),
    ("05_gradient_computation_backward.py", "    h.retain_grad()  # ask", "    pass  # ask"),
    ("05_gradient_computation_backward.py", "    y = h + u + 2 * x", "    y = h + 2 * x"),
    ("05_gradient_computation_backward.py", "    for next_fn, _input_index in grad_fn.next_functions:",
     "    for next_fn, _input_index in grad_fn.next_functions[:1]:"),
    ("05_gradient_computation_backward.py", "        lines += graph_lines(next_fn, depth + 1)",
     "        lines += graph_lines(next_fn, depth)"),
    ("05_gradient_computation_backward.py", "    y = x**2 + 2 * x  # its graph is printed below\n    lines = graph_lines",
     "    y = x**2 + x * torch.tensor(2.0, requires_grad=True)  # its graph is printed below\n"
     "    lines = graph_lines"),
    ("05_gradient_computation_backward.py", "    y = x**2 + 2 * x  # its graph is printed below\n    lines = graph_lines",
     "    y = x**3 + 2 * x  # its graph is printed below\n    lines = graph_lines"),
    ("05_gradient_computation_backward.py", "    y = u**3", "    y = u**2"),
    ("05_gradient_computation_backward.py", "    y = x * 2\n", "    y = (x * 2).sum()\n"),
    ("05_gradient_computation_backward.py", "    x = torch.tensor(3.0)  # requires_grad defaults",
     "    x = torch.tensor(3.0, requires_grad=True)  # requires_grad defaults"),
]

# Written by a tester who had not read these tests, from the lessons and the package alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # ---------------------------------------------------------------- 05 backward
    # retain_grad() called on x (a leaf, where it does nothing) instead of the intermediate h: h.grad None
    ('05_gradient_computation_backward.py', '    h.retain_grad()  # ask autograd', '    x.retain_grad()  # ask autograd'),
    # chain rule computed on u**2 with a matching by-hand oracle: x.grad = 2 sin cos, not 3 sin² cos (lesson still agrees)
    ('05_gradient_computation_backward.py', '    y = u**3\n    y.backward()\n    # dy/dx = dy/du · du/dx = 3 sin(x)² · cos(x): backward() multiplies these node by node.\n    lab.check(x.grad, 3 * math.sin(0.5) ** 2 * math.cos(0.5),', '    y = u**2\n    y.backward()\n    # dy/dx = dy/du · du/dx = 3 sin(x)² · cos(x): backward() multiplies these node by node.\n    lab.check(x.grad, 2 * math.sin(0.5) * math.cos(0.5),'),
    # graph_lines walks next_functions in reverse: the printed graph lists Mul before Pow
    ('05_gradient_computation_backward.py', 'for next_fn, _input_index in grad_fn.next_functions:', 'for next_fn, _input_index in reversed(grad_fn.next_functions):'),
    # original example with a sign slip: y = x² − 2x, x.grad = 4 and grad_fn SubBackward0
    ('05_gradient_computation_backward.py', '    y = x**2 + 2 * x\n    # y is a scalar', '    y = x**2 - 2 * x\n    # y is a scalar'),
]


def test_original_example_matches_the_analytic_derivative(lab):
    x = 3.0
    seen = lab.run(lesson.original_example)
    assert seen["x.grad"].item() == pytest.approx(2 * x + 2)
    assert seen["type(y.grad_fn).__name__"] == "AddBackward0"  # the last op of x**2 + 2*x is the +


def test_the_original_example_is_in_the_original_description():
    """The docstring's pointer: docs/original-description.ko.md, Autograd Playground §1, has this code."""
    assert "docs/original-description.ko.md, Autograd Playground §1" in " ".join(lesson.__doc__.split())
    section = playground_section(1)
    assert "x = torch.tensor(3.0, requires_grad=True)" in section and "y = x ** 2 + 2 * x" in section
    assert "y.backward()" in section and "dy/dx = 2x + 2 = 8" in section


def test_original_function_passes_gradcheck():
    x = torch.tensor([3.0, -1.5, 0.25], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: t**2 + 2 * t, (x,))


def test_leaf_and_non_leaf(lab):
    seen = lab.run(lesson.leaf_and_non_leaf)
    x = 3.0
    assert seen["x.grad"].item() == pytest.approx(2 * x + 2 * x + 2)  # d/dx (x² + x² + 2x)
    assert seen["h.grad"].item() == 1.0  # d/dh (h + u + 2x)
    assert seen["u_grad"] is None
    assert seen["(x.is_leaf, h.is_leaf, u.is_leaf)"] == (True, False, False)
    assert any("is not a leaf Tensor" in w for w in seen["warnings"])


def test_graph_walk_reaches_every_leaf_and_constant(lab):
    seen = lab.run(lesson.real_graph)
    # y = x**2 + 2*x: Add(Pow(x), Mul(x, 2)), drawn two spaces deeper per level. pow has one input, x
    # (its exponent is an argument); mul has two, x and the 2, which needs no gradient: a None edge.
    assert seen.names["lines"] == ["AddBackward0",
                                   "  PowBackward0", "    AccumulateGrad -> leaf of shape ()",
                                   "  MulBackward0", "    AccumulateGrad -> leaf of shape ()", "    None"]
    assert seen["names"] == ["AddBackward0", "PowBackward0", "AccumulateGrad",
                             "MulBackward0", "AccumulateGrad", "None"]
    pow_edges, exponent = seen["(len(power.next_functions), power._saved_exponent)"]
    assert pow_edges == 1 and seen["len(product.next_functions)"] == 2
    assert exponent == 2 and not isinstance(exponent, torch.Tensor)


def test_graph_walk_turns_none_into_accumulate_grad_for_a_second_leaf():
    x = torch.tensor(1.0, requires_grad=True)
    c = torch.tensor(2.0, requires_grad=True)
    names = [line.strip().split(" ")[0] for line in lesson.graph_lines((c * x).grad_fn)]
    assert names == ["MulBackward0", "AccumulateGrad", "AccumulateGrad"]


def test_chain_rule_matches_float64_finite_differences(lab):
    grad = lab.run(lesson.chain_rule)["x.grad"].item()
    x, h = 0.5, 1e-6
    f = lambda t: math.sin(t) ** 3  # noqa: E731
    assert grad == pytest.approx((f(x + h) - f(x - h)) / (2 * h), rel=1e-5)


def test_backward_errors_are_caught_and_named(lab):
    assert_caught(lab.run(lesson.non_scalar_backward)["error"], RuntimeError,
                  "grad can be implicitly created only for scalar outputs")
    seen = lab.run(lesson.no_grad_backward)
    assert seen["(y.requires_grad, y.grad_fn)"] == (False, None)  # x did not ask for a gradient
    assert_caught(seen["error"], RuntimeError, "element 0 of tensors does not require grad")


def test_the_printed_code_is_the_lesson_source(lab):
    """What the learner reads is the code that ran, line for line (the lab reads it back from the file)."""
    lab.run(lesson.leaf_and_non_leaf)
    printed = lab.stream.getvalue()
    for line in ("x = torch.tensor(3.0, requires_grad=True)", "h.retain_grad()",
                 "y = h + u + 2 * x", "y.backward()", "u_grad = u.grad"):
        assert f"\n    {line}" in printed, line
    assert "lab.check" not in printed and "lab.expect_warning" not in printed

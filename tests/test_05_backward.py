"""05 backward: every gradient against the analytic derivative, gradcheck or finite differences."""

import re
import math

import pytest
import torch

from conftest import assert_caught, load_lesson, run_script

lesson = load_lesson("05_gradient_computation_backward.py")


def test_seed_example_matches_analytic_derivative(lab):
    x = 3.0
    assert lesson.seed_example(lab).item() == pytest.approx(2 * x + 2)


def test_seed_function_passes_gradcheck():
    x = torch.tensor([3.0, -1.5, 0.25], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: t**2 + 2 * t, (x,))


def test_leaf_and_non_leaf(lab):
    grads = lesson.leaf_and_non_leaf(lab)
    x = 3.0
    assert grads["x.grad"].item() == pytest.approx(2 * x + 2 * x + 2)  # d/dx (x² + x² + 2x)
    assert grads["h.grad"].item() == 1.0
    assert grads["u.grad"] is None


def test_graph_walk_reaches_every_leaf_and_constant(lab):
    lines = [line.strip() for line in lesson.real_graph(lab)]
    names = [line.split(" ")[0] for line in lines]
    # y = x**2 + 2*x: Add(Pow(x), Mul(x, 2)); the constant 2 is a None edge.
    assert names == ["AddBackward0", "PowBackward0", "AccumulateGrad", "MulBackward0", "AccumulateGrad", "None"]


def test_graph_walk_turns_none_into_accumulate_grad_for_a_second_leaf():
    x = torch.tensor(1.0, requires_grad=True)
    c = torch.tensor(2.0, requires_grad=True)
    names = [line.strip().split(" ")[0] for line in lesson.graph_lines((c * x).grad_fn)]
    assert names == ["MulBackward0", "AccumulateGrad", "AccumulateGrad"]


def test_chain_rule_matches_float64_finite_differences(lab):
    grad = lesson.chain_rule(lab).item()
    x, h = 0.5, 1e-6
    f = lambda t: math.sin(t) ** 3  # noqa: E731
    assert grad == pytest.approx((f(x + h) - f(x - h)) / (2 * h), rel=1e-5)


def test_backward_errors_are_caught_and_named(lab):
    assert_caught(lesson.non_scalar_backward(lab), RuntimeError, "grad can be implicitly created only for scalar outputs")
    assert_caught(lesson.no_grad_backward(lab), RuntimeError, "element 0 of tensors does not require grad")


def test_runs_as_a_script():
    result = run_script("05_gradient_computation_backward.py", "--device", "cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"x\.grad = 8\b", result.stdout) and "AccumulateGrad" in result.stdout
    assert "Traceback" not in result.stderr

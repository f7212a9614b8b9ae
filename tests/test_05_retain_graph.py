"""05 retain_graph: 12 then 24, the error without it, the silent doubling, the second derivative."""

import re
import pytest
import torch

from conftest import assert_caught, load_lesson, run_script

lesson = load_lesson("05_gradient_computation_retain_graph.py")


def test_seed_loop_accumulates_12_then_24(lab):
    x = 2.0
    assert lesson.seed_loop(lab) == [pytest.approx(3 * x**2), pytest.approx(2 * 3 * x**2)]


def test_without_retain_graph_the_second_call_raises(lab):
    seen = lesson.without_retain_graph(lab)
    assert_caught(seen["error"], RuntimeError, "Trying to backward through the graph a second time")
    assert seen["grad"].item() == pytest.approx(12.0)


def test_graph_without_saved_tensors_doubles_silently(lab):
    x_grad, v_grad = lesson.nothing_saved(lab)
    assert x_grad.item() == 2.0  # d/dx (x + 1) = 1, twice
    assert v_grad.cpu().tolist() == [2.0, 2.0, 2.0]


def test_second_derivative_matches_analytic_and_gradgradcheck(lab):
    dy, d2y = lesson.second_derivative(lab)
    x = 2.0
    assert dy.item() == pytest.approx(3 * x**2)
    assert d2y.item() == pytest.approx(6 * x)
    t = torch.tensor([2.0, -0.7], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda v: v**3, (t,))


def test_runs_as_a_script():
    result = run_script("05_gradient_computation_retain_graph.py", "--device", "cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"x\.grad = 12\b", result.stdout) and re.search(r"x\.grad = 24\b", result.stdout)

"""05 accumulation: the seed's 7 then 3, the seed's crash, resets, micro-batches."""

import re
import pytest
import torch

from conftest import assert_caught, load_lesson, run_script

lesson = load_lesson("05_gradient_computation_accumulation.py")


def test_seed_as_written_raises_on_the_second_y2_backward(lab):
    seen = lesson.seed_as_written(lab)
    assert seen["first"] == pytest.approx(2 * 2.0 + 3)  # d/dx x² + d/dx 3x at x = 2
    assert_caught(seen["error"], RuntimeError, "Trying to backward through the graph a second time")
    assert seen["after_failure"].item() == 0.0


def test_seed_fixed_prints_7_then_3(lab):
    assert lesson.seed_fixed(lab) == (pytest.approx(7.0), pytest.approx(3.0))


def test_three_resets(lab):
    assert lesson.three_resets(lab)["zeroed"].item() == 0.0


def test_micro_batches_sum_to_the_full_batch_gradient(lab):
    full, accumulated = lesson.micro_batches(lab, k=4)
    # Oracle: d/dw mean((w x - y)²) = 2/n Σ (w x - y) x, in float64 by hand.
    x = torch.linspace(-1.0, 1.0, 8, dtype=torch.float64)
    y = 2 * x + 1
    expected = (2 * (0.5 * x - y) * x).mean().item()
    assert full.item() == pytest.approx(expected, rel=1e-6)
    assert accumulated.item() == pytest.approx(expected, rel=1e-6)


def test_forgotten_reset_grows_linearly(lab):
    # d/dw (3w)² = 18w = 18 at w = 1, added once per step.
    assert lesson.forgotten_reset(lab, steps=4) == [18.0, 36.0, 54.0, 72.0]


def test_runs_as_a_script():
    result = run_script("05_gradient_computation_accumulation.py", "--device", "cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Trying to backward through the graph a second time" in result.stdout
    assert re.search(r"x\.grad = 7\b", result.stdout) and re.search(r"x\.grad = 3\b", result.stdout)

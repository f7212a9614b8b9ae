"""05 accumulation: every value the lesson returns, against an oracle written here: derivatives
by hand, the micro-batch gradient in float64, saved-element counts from the shapes, and SGD
replayed in plain floats (with the gradient reset, and summed)."""

import pytest
import torch

from conftest import assert_caught, load_lesson

lesson = load_lesson("05_gradient_computation_accumulation.py")

MUTANTS = [
    ("05_gradient_computation_accumulation.py", "    y2 = 3 * x\n    # For x's gradient", "    y2 = 2 * x\n    # For x's gradient"),
    ("05_gradient_computation_accumulation.py", "    x.grad.zero_()\n    y2.backward()  # the second walk", "    y2.backward()  # the second walk"),
    # the three resets in [3], one at a time
    ("05_gradient_computation_accumulation.py", "    x.grad.zero_()  # in place: the same tensor, now 0\n", ""),
    ("05_gradient_computation_accumulation.py", "    x.grad = None  # drop it: the next backward stores a new tensor instead of adding\n", ""),
    ("05_gradient_computation_accumulation.py", "    optimizer.zero_grad()\n    after_zero_grad = x.grad", "    after_zero_grad = x.grad"),
    ("05_gradient_computation_accumulation.py", "mean() / k)", "mean())"),
    ("05_gradient_computation_accumulation.py", "        count += tensor.numel()", "        count += 1"),
    ("05_gradient_computation_accumulation.py", "            if reset:\n                optimizer.zero_grad()\n", ""),
    ("05_gradient_computation_accumulation.py", "(2 - a) * trajectory[-1] - trajectory[-2]", "(1 - a) * trajectory[-1]"),
]


def test_original_as_written_adds_then_raises(lab):
    seen = lesson.original_as_written(lab)
    x = 2.0
    assert seen["after_two_calls"] == pytest.approx(2 * x + 3)  # d/dx x² + d/dx 3x
    assert seen["after_failure"] == 0.0
    assert_caught(seen["error"], RuntimeError, "Trying to backward through the graph a second time")


def test_original_fixed_gives_7_then_3(lab):
    x = 2.0
    assert lesson.original_fixed(lab) == (pytest.approx(2 * x + 3), pytest.approx(3.0), pytest.approx(3.0))


def test_three_resets(lab):
    seen = lesson.three_resets(lab)
    x = 2.0
    assert seen["after_zero_"] == (True, 0.0)  # same object, zeroed
    # A new tensor holding 2x (not 2x + 2x); the held one keeps 0 + 2x from the backward before.
    assert seen["after_none"] == (False, pytest.approx(2 * x), pytest.approx(2 * x))
    assert seen["after_zero_grad"] is None  # optimizer.zero_grad() sets None by default
    assert seen["after_zero_grad_in_place"] == (True, 0.0)


@pytest.mark.parametrize("k, n", [(4, 8), (2, 12)])
def test_micro_batches_add_up_to_the_full_batch(lab, k, n):
    seen = lesson.micro_batches(lab, k=k, n=n)
    x = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    y = 2 * x + 1
    expected = (2 * (0.5 * x - y) * x).mean().item()  # d/dw mean((w x - y)²) at w = 0.5
    assert seen["full_batch"].item() == pytest.approx(expected, rel=1e-6)
    assert seen["accumulated"].item() == pytest.approx(expected, rel=1e-5)
    # mul saves x (for w's gradient), pow saves w x - y: one element per point each.
    assert seen["full_saved"] == 2 * n
    assert seen["micro_saved"] == [2 * n // k] * k


def test_forgotten_reset_adds_18_each_step(lab):
    # d/dw (3w)² = 18w = 18 at w = 1, added once per step.
    assert lesson.forgotten_reset(lab, steps=4) == [18.0, 36.0, 54.0, 72.0]


def sgd_by_hand(lr: float, steps: int, reset: bool) -> list[float]:
    """Plain SGD on (3w)², gradient 18w, in floats: the gradient replaced each step, or summed."""
    w, grad, trajectory = 1.0, 0.0, [1.0]
    for _ in range(steps):
        grad = 18 * w if reset else grad + 18 * w
        w -= lr * grad
        trajectory.append(w)
    return trajectory


@pytest.mark.parametrize("lr", [0.05, 0.01])
def test_summed_gradient_oscillates_without_growing(lab, lr):
    runs = lesson.summed_gradient_steps(lab, lr=lr, steps=30)
    assert runs["reset"] == pytest.approx(sgd_by_hand(lr, 30, reset=True), rel=1e-4, abs=1e-6)
    assert runs["summed"] == pytest.approx(sgd_by_hand(lr, 30, reset=False), rel=1e-4, abs=1e-5)
    # Bounded and not settling: the amplitude of cos/sin with roots on the unit circle.
    assert 0.9 < max(abs(w) for w in runs["summed"][-10:]) < 1.2


@pytest.mark.parametrize("lr_times_curvature", [0.9, 3.6, 4.5])
def test_the_recurrence_matches_summed_sgd(lr_times_curvature):
    lr = lr_times_curvature / 18
    assert lesson.summed_gradient_recurrence(lr_times_curvature, 12) == pytest.approx(
        sgd_by_hand(lr, 12, reset=False), rel=1e-9, abs=1e-12)

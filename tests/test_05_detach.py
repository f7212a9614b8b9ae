"""05 detach: what each way out of the graph leaves behind, and the update outside no_grad."""

import math

import pytest

from conftest import assert_caught, load_lesson, run_script

lesson = load_lesson("05_gradient_computation_detach.py")


def test_seed_example(lab):
    assert lesson.seed_example(lab) == {"w": False, "u": False}


def test_three_ways(lab):
    results = lesson.three_ways(lab)
    assert [t.requires_grad for t in results.values()] == [False, False, False]
    assert [t.is_inference() for t in results.values()] == [False, False, True]
    assert results["inference"].cpu().tolist() == [2.0, 4.0]


def test_detach_shares_storage_and_the_version_counter_catches_it(lab):
    seen = lesson.detach_shares_storage(lab)
    assert seen["y"].cpu().tolist() == pytest.approx([math.exp(0) + 1, math.exp(1) + 1])
    assert_caught(seen["error"], RuntimeError, "modified by an inplace operation")


def test_inference_tensors_cannot_be_saved(lab):
    seen = lesson.inference_tensors(lab)
    assert_caught(seen["error"], RuntimeError, "Inference tensors cannot be saved for backward")
    assert seen["grad"].cpu().tolist() == [2.0, 2.0]  # d/dx Σ 2x


def test_update_outside_no_grad(lab):
    seen = lesson.update_outside_no_grad(lab, lr=0.1)
    assert_caught(seen["error"], RuntimeError, "a leaf Variable that requires grad is being used in an in-place operation")
    assert seen["next_grad"] is None
    assert seen["w"].item() == pytest.approx(1.0 - 0.1 * 2)  # w - lr * d/dw (2w)
    assert seen["w"].is_leaf


def test_runs_as_a_script():
    result = run_script("05_gradient_computation_detach.py", "--device", "cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "a leaf Variable that requires grad" in result.stdout

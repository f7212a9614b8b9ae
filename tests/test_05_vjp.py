"""05 vjp: vᵀJ, the Jacobian three ways against diag(1 - y²) W, the loop traps, the batch trap."""

import pytest
import torch

from conftest import load_lesson, run_script, terminal_usage_error

lesson = load_lesson("05_gradient_computation_vjp.py")


def hand_built_jacobian(size: int, device) -> torch.Tensor:
    """The oracle, built independently: float64 central differences of the same layer."""
    layer, x, _ = lesson.tanh_layer(size, torch.device(device))
    layer64 = lambda v: layer(v.float()).double()  # noqa: E731
    x = x.double()
    h = 1e-3
    columns = [(layer64(x + h * e) - layer64(x - h * e)) / (2 * h) for e in torch.eye(size, dtype=torch.float64, device=x.device)]
    return torch.stack(columns, dim=1)


def test_seed_example_is_v_transpose_j(lab):
    ones, halves = lesson.seed_example(lab)
    x = torch.tensor([1.0, 2.0])
    jacobian = torch.diag(2 * x)  # d(x²)/dx
    assert torch.allclose(ones.cpu(), torch.tensor([1.0, 1.0]) @ jacobian)
    assert torch.allclose(halves.cpu(), torch.tensor([1.0, 0.5]) @ jacobian)


def test_three_ways_agree_with_finite_differences(lab):
    results = lesson.jacobian_three_ways(lab, size=4)
    oracle = hand_built_jacobian(4, lab.device).float()
    for name, jacobian in results.items():
        assert torch.allclose(jacobian, oracle, atol=1e-3), name


def test_loop_traps(lab):
    seen = lesson.loop_traps(lab, size=3)
    oracle = hand_built_jacobian(3, lab.device).float()
    assert torch.allclose(seen["cumulative"], oracle.cumsum(0), atol=1e-3)
    assert torch.allclose(seen["aliased"], oracle[-1].expand(3, 3), atol=1e-3)


def test_timings_are_positive_and_all_methods_agree(lab):
    seconds = lesson.jacobian_timings(lab, size=32, repeats=1)
    assert set(seconds) == {"grad loop", "is_grads_batched", "vmap(vjp)"}
    assert all(s > 0 for s in seconds.values())


def test_is_grads_batched_falls_back_for_tanh(lab):
    warnings = lesson.batched_grad_fallback(lab)
    assert any("aten::tanh_backward" in w for w in warnings)


def test_batchnorm_train_mode_breaks_per_sample_gradients(lab):
    gaps = lesson.per_sample_trap(lab)
    assert gaps["train"] > 1e-3
    assert gaps["eval"] == pytest.approx(0.0, abs=1e-6)


def test_runs_as_a_script_and_rejects_a_bad_size():
    result = run_script("05_gradient_computation_vjp.py", "--device", "cpu", "--size", "64")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "vmap(vjp)" in result.stdout
    assert "--size" in terminal_usage_error("05_gradient_computation_vjp.py", "--size", "0")

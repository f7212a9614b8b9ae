"""The trainer's observation points (tensor_features/trainer/observations.py): the update outside no_grad,
what create_graph=True is for (w.grad against gradients written out here), f′ two ways against the
analytic derivative, the BatchNorm trap against the batch Jacobian built row by row with
autograd.grad, and the sweep's conditioning against numpy."""

import numpy as np
import pytest
import torch

from tensor_features.trainer import experiment, fitting, model, observations
from tensor_features.config import TrainConfig
from tests.trainer.oracles import derivative_gradient, mse_gradient, original_problem

MUTANTS = [
    ("tensor_features/trainer/observations.py", "jacobian.diagonal().detach(), jacobian.sum(0).detach()",
     "jacobian.sum(1).detach(), jacobian.sum(0).detach()"),
    ("tensor_features/trainer/observations.py", "by_formula = loss.weight * 2 / len(x)", "by_formula = loss.weight / len(x)"),
    ("tensor_features/trainer/observations.py", "without_graph, terms_without = gradient(create_graph=False, retain_graph=True)",
     "without_graph, terms_without = gradient(create_graph=True, retain_graph=True)"),
    ("tensor_features/trainer/observations.py", "buffers = {name: b.clone() for name, b in extractor.named_buffers()}",
     "buffers = {name: b.clone() for name, b in extractor.named_buffers()}\n    extractor.eval()"),
    ("tensor_features/trainer/observations.py", "cosines = (columns.T @ columns).abs().fill_diagonal_(0)",
     "cosines = (phi.double().T @ phi.double()).abs().fill_diagonal_(0)"),
]

# Written by a tester who had not read these tests, from the lessons and the package alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # ---------------------------------------------------------------- observations.py
    # batchnorm_trap: column sums taken over the wrong axis (row sums of J)
    ('tensor_features/trainer/observations.py', 'jacobian.sum(0).detach()', 'jacobian.sum(1).detach()'),
    # max_column_cosine: rows normalised instead of columns
    ('tensor_features/trainer/observations.py', 'columns = phi.double() / phi.double().norm(dim=0)', 'columns = phi.double() / phi.double().norm(dim=1, keepdim=True)'),
]


def test_update_outside_no_grad_reports_both_failures():
    x, y, phi, w0 = original_problem()
    observed = observations.update_outside_no_grad(phi, y, w0, 0.1)
    assert "a leaf Variable that requires grad is being used in an in-place operation" in observed.in_place_error
    first, second = observed.rebinding
    assert first.loss == pytest.approx(((phi @ w0 - y) ** 2).mean().item(), rel=1e-6)
    assert (first.is_leaf, first.grad_fn) == (False, "SubBackward0")
    assert second.epoch == 1 and second.loss is None  # w.grad is None: w is no longer a leaf


@pytest.mark.parametrize("name, weight", [("sobolev", 1.0), ("smooth", 0.1)])
def test_create_graph_is_what_lets_the_derivative_term_reach_w(name, weight):
    x, y, phi, w0 = original_problem()
    target = 2 * x if name == "sobolev" else torch.zeros_like(x)
    check = observations.create_graph_check(model.Loss(name, weight), x, y, w0, 3, "monomial")
    data, derivative = mse_gradient(phi, w0, y), derivative_gradient(x, w0, weight, target)
    assert torch.allclose(check.with_graph, data + derivative, atol=1e-5)
    assert torch.allclose(check.data_only, data, atol=1e-6)
    assert torch.allclose(check.by_formula, derivative, atol=1e-5)
    # Without create_graph the derivative term is a constant: its contribution to w.grad is missing.
    assert torch.allclose(check.without_graph, data, atol=1e-6)
    assert (check.without_graph - check.with_graph).abs().max() > 0.1
    assert check.slope_requires_grad == (True, False)
    assert "Trying to backward through the graph a second time" in check.freed_error


def two_route_rounding_bound(w: torch.Tensor, x: torch.Tensor, roundings: int = 5) -> torch.Tensor:
    """The largest |a − b|, per x, between two float32 routes to f′(x) = w₀ + 2w₁x + 3w₂x² that each
    round at most `roundings` times on the way from (x, w) to any term, in float64.

    Each route is within γ_k·Σⱼ|tⱼ| of the exact f′ of the same float32 x and w (Higham's bound for a
    sum of k-times-rounded terms, γ_k = k·u/(1 − k·u), u = 2⁻²⁴), in any order of the adds, with or
    without fused multiply-adds, so two routes are within 2γ_k·Σⱼ|tⱼ|. k = 5 for every route here: the
    x² term takes x², ×3, ×w₂ (3 roundings; Φ′w: x², ×3, then the product in the matmul) and the
    three terms two adds. Where the terms cancel (|x| near 1: f′ = −0.1 from terms summing to 4.3 in
    size) this is 2.6e-6, more than an absolute 1e-6: the matmul's order and its use of FMA differ
    between CPUs, so no tighter bound holds everywhere."""
    u = torch.finfo(torch.float32).eps / 2
    gamma = roundings * u / (1 - roundings * u)
    w64, x64 = w.double().flatten(), x.double()
    return 2 * gamma * (w64[0].abs() + 2 * w64[1].abs() * x64.abs() + 3 * w64[2].abs() * x64**2)


def test_both_routes_to_f_prime_at_the_trained_w():
    x, y, phi, w0 = original_problem()
    w = torch.tensor([[0.3], [-1.1], [0.6]])
    routes = observations.derivative_routes(model.feature_map, w, x, model.feature_derivative_map(x))
    analytic = w[0] + 2 * w[1] * x + 3 * w[2] * x**2  # a route of its own: 5 roundings too
    bound = two_route_rounding_bound(w, x)  # at most 2.6e-6 here (at |x| = 1), about 5 float32 ulps of 4.3
    for value in (routes.batched, routes.vmapped, routes.formula):
        assert ((value.double() - analytic.double()).abs() <= bound).all()
    assert routes.vmap_gap <= bound.max().item() and routes.formula_gap <= bound.max().item()


def test_batchnorm_trap_sum_trick_is_the_column_sums_not_the_diagonal():
    x = torch.linspace(-1, 1, 12).unsqueeze(1)
    torch.manual_seed(3)
    extractor = fitting.MLPFeatures(3, batchnorm=True)
    w = torch.randn(3, 1)
    trap = observations.batchnorm_trap(extractor, w, x)
    # Oracle: the batch Jacobian row by row, one autograd.grad per output, in train mode.
    inputs = x.clone().requires_grad_()
    outputs = (extractor(inputs) @ w).flatten()
    rows = torch.stack([torch.autograd.grad(outputs[j], inputs, retain_graph=True)[0].flatten() for j in range(12)])
    assert torch.allclose(trap.diagonal, rows.diagonal(), atol=1e-6)
    assert torch.allclose(trap.sum_trick, rows.sum(0), atol=1e-5)  # Σ_j ∂f_j/∂x_i
    assert torch.allclose(trap.column_sums, rows.sum(0), atol=1e-5)
    assert trap.gap > 1e-2 and trap.gap == pytest.approx((rows.sum(0) - rows.diagonal()).abs().max().item(), abs=1e-5)
    assert trap.eval_gap < 1e-6
    assert "mutate a captured Tensor" in trap.vmap_error
    assert "Expected more than 1 value per channel when training" in trap.vmap_error_replaced


def test_sweep_rows_match_their_own_problems():
    x, y, _, _ = original_problem()
    rows = experiment.degree_sweep(TrainConfig(), x, y, model.Loss(), degrees=[1, 3])
    for row in rows:
        phi = model.feature_map(x, row.degree).double().numpy()
        eigenvalues = np.linalg.eigvalsh(phi.T @ phi)
        assert row.condition_number == pytest.approx(eigenvalues[-1] / eigenvalues[0], rel=1e-6)
        normalised = phi / np.linalg.norm(phi, axis=0)
        cosines = np.abs(normalised.T @ normalised) - np.eye(row.degree)
        assert row.max_cosine == pytest.approx(max(cosines.max(), 0.0), abs=1e-9)

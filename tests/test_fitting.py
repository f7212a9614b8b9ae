"""The training loop (tensor_features/fitting.py): each epoch against its gradient written out here,
SGD replayed by hand bit for bit, the fits against torch.linalg.lstsq and numpy's least squares on
a stacked system, the --fast loss against its float64 formula, and the fitted curve at new x."""

import math

import numpy as np
import pytest
import torch

from conftest import DEVICES
from tensor_features import fitting, model
from train_oracles import derivative_gradient, mse_gradient, numpy_optimum, original_problem

MUTANTS = [
    ("tensor_features/fitting.py", "w.grad.zero_()  # without this, next epoch's backward adds to this gradient",
     "w.grad.mul_(0.5)  # without this, next epoch's backward adds to this gradient"),
    ("tensor_features/fitting.py", "terms.total.backward(inputs=[w])  # x requires grad too",
     "terms.data.backward(inputs=[w])  # x requires grad too"),
    ("tensor_features/fitting.py", "with torch.no_grad():  # the original update\n            w -= lr * w.grad",
     "with torch.no_grad():  # the original update\n            w -= 0.5 * lr * w.grad"),
    ("tensor_features/fitting.py", "optimizer = torch.optim.SGD(parameters(w), lr=lr)",
     "optimizer = torch.optim.SGD(parameters(w), lr=lr, momentum=0.1)"),
    ("tensor_features/fitting.py", "loss = mse(phi @ w, y)\n    loss.backward()\n    optimizer.step()",
     "loss = mse(phi @ w, y)\n    optimizer.step()\n    loss.backward()"),
    ("tensor_features/fitting.py", "prediction = sum(w[k] * phi_rows[k] for k in range(phi_rows.shape[0]))",
     "prediction = sum(w[k] * phi_rows[k] for k in range(phi_rows.shape[0] - 1))"),
    ("tensor_features/fitting.py", "_, slopes = batched_derivative(linear_model(features, w), x_new, create_graph=False)",
     "_, slopes = batched_derivative(linear_model(features, w), x_new**2, create_graph=False)"),
]


def test_manual_step_is_one_gradient_step_and_resets_grad():
    x, y, phi, w0 = original_problem()
    w = w0.clone().requires_grad_()
    fitting.manual_step(phi, y, w, lr=0.1)
    assert torch.allclose(w.detach(), w0 - 0.1 * mse_gradient(phi, w0, y), atol=1e-6)
    assert torch.count_nonzero(w.grad) == 0 and w.is_leaf


@pytest.mark.parametrize("name, weight", [("sobolev", 1.0), ("smooth", 0.1)])
def test_derivative_step_is_one_gradient_step_of_both_terms(name, weight):
    x, y, phi, w0 = original_problem()
    target = 2 * x if name == "sobolev" else torch.zeros_like(x)
    w = w0.clone().requires_grad_()
    loss, data = fitting.derivative_step(model.Loss(name, weight), model.feature_map, x, y, w, lr=0.1)
    expected = w0 - 0.1 * (mse_gradient(phi, w0, y) + derivative_gradient(x, w0, weight, target))
    assert torch.allclose(w.detach(), expected, atol=1e-6)
    assert torch.count_nonzero(w.grad) == 0
    slope = w0[0] + 2 * w0[1] * x + 3 * w0[2] * x**2
    assert data == pytest.approx(((phi @ w0 - y) ** 2).mean().item(), rel=1e-5)
    assert loss == pytest.approx(data + weight * ((slope - target) ** 2).mean().item(), rel=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_sgd_is_bitwise_the_fused_manual_update(device):
    # SGD's step is w.add_(w.grad, alpha=-lr) under no_grad: replay exactly that by hand.
    x, y, phi, w0 = original_problem(device)
    sgd = fitting.fit(phi, y, w0, lr=0.1, epochs=100, update="sgd")
    w = w0.clone().requires_grad_()
    losses = []
    for _ in range(100):
        loss = ((phi @ w - y) ** 2).mean()
        loss.backward()
        losses.append(loss.item())
        with torch.no_grad():
            w.add_(w.grad, alpha=-0.1)
            w.grad = None
    assert losses == sgd.losses
    assert torch.equal(w.detach(), sgd.w)


def test_original_manual_update_agrees_with_sgd_to_float32_rounding():
    x, y, phi, w0 = original_problem()
    manual = fitting.fit(phi, y, w0, lr=0.1, epochs=100, update="manual")
    sgd = fitting.fit(phi, y, w0, lr=0.1, epochs=100, update="sgd")
    assert manual.losses == pytest.approx(sgd.losses, rel=1e-5)
    assert torch.allclose(manual.w, sgd.w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_converges_to_the_lstsq_optimum(device):
    x, y, phi, w0 = original_problem(device)
    # Oracle: torch.linalg.lstsq (QR-based), independent of the trainer's chunked normal equations.
    phi64, y64 = phi.double().cpu(), y.double().cpu()
    w_star = torch.linalg.lstsq(phi64, y64).solution
    best = ((phi64 @ w_star - y64) ** 2).mean().item()
    result = fitting.fit(phi, y, w0, lr=1.0, epochs=3000)
    assert result.final_loss == pytest.approx(best, rel=0.01)
    assert torch.allclose(result.w.cpu().double(), w_star, atol=1e-2)


@pytest.mark.parametrize("name, weight", [("sobolev", 1.0), ("smooth", 0.1)])
def test_derivative_losses_train_to_their_stacked_optimum(name, weight):
    x, y, phi, w0 = original_problem()
    target = 2 * x if name == "sobolev" else torch.zeros_like(x)
    w_star, best, eigenvalues = numpy_optimum(x, y, weight, target)
    lr = 2 / (eigenvalues[0] + eigenvalues[-1])  # the best fixed step, from numpy's eigenvalues
    for update in ("manual", "sgd"):
        result = fitting.fit_loss(model.Loss(name, weight), model.feature_map, x, y, w0, lr, 150, update)
        assert result.final_loss == pytest.approx(best, rel=1e-3)
        assert np.allclose(result.w.numpy(), w_star, atol=1e-3)
        assert len(result.data_losses) == len(result.losses) == 150


def test_a_zero_weight_runs_bit_for_bit_like_the_mse_path():
    x, y, phi, w0 = original_problem()
    for update in ("manual", "sgd"):
        plain = fitting.fit(phi, y, w0, 0.1, 100, update)
        for name in ("sobolev", "smooth"):
            zero = fitting.fit_loss(model.Loss(name, 0.0), model.feature_map, x, y, w0, 0.1, 100, update)
            assert zero.losses == plain.losses and torch.equal(zero.w, plain.w)


def test_lr_auto_converges_faster_than_the_original_lr():
    x, y, phi, w0 = original_problem()
    optimum = model.least_squares_optimum(phi, y)
    eigenvalues = torch.linalg.eigvalsh(2 * phi.double().T @ phi.double() / len(x))
    assert optimum.best_lr == pytest.approx(2 / (eigenvalues[0] + eigenvalues[-1]).item())
    auto = model.epochs_to_within(fitting.fit(phi, y, w0, optimum.best_lr, 1000).losses, optimum.loss)
    original = model.epochs_to_within(fitting.fit(phi, y, w0, 0.1, 1000).losses, optimum.loss)
    assert auto is not None and original is not None and auto < original


def test_fast_loss_is_the_original_loss_with_the_same_gradient():
    x, y, phi, w0 = original_problem()
    fast = fitting.FastLoss(fitting.rows_layout(phi), y, compile=False)
    w = w0.clone().requires_grad_()
    loss = fast.manual_step(w, lr=0.0)  # lr 0: keep w, look at the loss and the gradient
    phi64, y64, w64 = phi.double(), y.double(), w0.double()
    assert loss == pytest.approx(((phi64 @ w64 - y64) ** 2).mean().item(), rel=1e-6)
    w.grad = None
    fitting.rows_loss(w, fast.phi_rows, fast.y_flat).backward()
    assert torch.allclose(w.grad.double(), mse_gradient(phi64, w64, y64), atol=1e-6)
    assert fitting.rows_layout(phi).T.is_contiguous() and torch.equal(fitting.rows_layout(phi), phi)


def test_fast_fit_follows_the_original_trajectory():
    x, y, phi, w0 = original_problem()
    original = fitting.fit(phi, y, w0, lr=0.1, epochs=100)
    for update in ("manual", "sgd"):
        fast = fitting.fit(phi, y, w0, lr=0.1, epochs=100, update=update, fast=fitting.FastLoss(phi, y, compile=False))
        assert fast.losses == pytest.approx(original.losses, rel=1e-5)
        assert torch.allclose(fast.w, original.w, rtol=1e-5, atol=1e-6)


def test_forgetting_zero_grad_is_worse():
    x, y, phi, w0 = original_problem()
    good = fitting.fit(phi, y, w0, lr=0.1, epochs=100)
    bad = fitting.fit(phi, y, w0, lr=0.1, epochs=100, zero_grad=False)
    assert bad.diverged_at is not None or bad.final_loss > 2 * good.final_loss


def test_divergence_is_detected_not_propagated():
    x, y, phi, w0 = original_problem()
    result = fitting.fit(phi, y, w0, lr=50.0, epochs=500)
    assert result.diverged_at is not None and all(math.isfinite(loss) for loss in result.losses)


def test_fitted_curve_is_the_fit_and_its_derivative_at_new_x():
    w = torch.tensor([[0.1], [0.9], [0.2]])
    curve = fitting.fitted_curve(model.feature_map, w)
    x = torch.linspace(-1, 1, 201).unsqueeze(1)
    assert torch.allclose(curve.values, 0.1 * x + 0.9 * x**2 + 0.2 * x**3, atol=1e-6)
    assert torch.allclose(curve.slopes, 0.1 + 1.8 * x + 0.6 * x**2, atol=1e-6)
    assert curve.values.is_inference() and not curve.values.requires_grad

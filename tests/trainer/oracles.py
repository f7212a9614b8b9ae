"""Oracles shared by the trainer's test files (test_fitting, test_observations, test_train): the
original problem, gradients written out by hand, and numpy's least squares on a stacked system
built here. Of the code under test only load_data, feature_map and initial_weights are called here (test_model.py
tests them on their own)."""

import math

import numpy as np
import torch

from tensor_features.trainer import model
from tensor_features.load_data import load_data


def original_problem(device="cpu", degree=3):
    x, y = load_data(100, 0.1, seed=0, device=device)
    return x, y, model.feature_map(x, degree), model.initial_weights(degree, 0, torch.device(device))


def mse_gradient(phi, w, y):
    return 2 / len(y) * phi.T @ (phi @ w - y)  # ∇ mean((Φw - y)²)


def derivative_gradient(x, w, weight, target):
    """∇ weight·mean((Φ′w − t)²) = weight · 2/n Φ′ᵀ(Φ′w − t), with Φ′ = [1, 2x, 3x²] typed in."""
    phi_prime = torch.cat([torch.ones_like(x), 2 * x, 3 * x**2], dim=1)
    return weight * 2 / len(x) * phi_prime.T @ (phi_prime @ w - target)


def stacked_system(x, y, weight=0.0, target=None):
    """[Φ; √weight Φ′] and [y; √weight t] in float64 numpy, Φ = [x, x², x³] and Φ′ = [1, 2x, 3x²] typed in."""
    x64, y64 = x.double().cpu().numpy(), y.double().cpu().numpy()
    a, b = np.hstack([x64, x64**2, x64**3]), y64
    if weight:
        a = np.vstack([a, math.sqrt(weight) * np.hstack([np.ones_like(x64), 2 * x64, 3 * x64**2])])
        b = np.vstack([b, math.sqrt(weight) * target.double().cpu().numpy()])
    return a, b


def numpy_optimum(x, y, weight=0.0, target=None):
    """Oracle: numpy.linalg.lstsq on [Φ; √weight Φ′] w ≈ [y; √weight t], and its Hessian's eigenvalues."""
    a, b = stacked_system(x, y, weight, target)
    w, *_ = np.linalg.lstsq(a, b, rcond=None)
    return w, float(((a @ w - b) ** 2).sum() / len(x)), np.linalg.eigvalsh(2 * a.T @ a / len(x))


def descent_losses(x, y, w0, lr, epochs, weight=0.0, target=None):
    """Gradient descent in float64 numpy with the gradient 2/n Aᵀ(Aw − b) written out: the loss at
    each epoch before its update, as the trainer records it, and the final w."""
    a, b = stacked_system(x, y, weight, target)
    w, losses = w0.double().cpu().numpy(), []
    for _ in range(epochs):
        residual = a @ w - b
        losses.append(float((residual**2).sum() / len(x)))
        w = w - lr * 2 / len(x) * a.T @ residual
    return losses, w

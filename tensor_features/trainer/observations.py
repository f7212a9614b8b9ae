"""The trainer's observation points, each computed into a dataclass (train.report prints them):
the update outside torch.no_grad(), what create_graph=True is for, f′ two ways, the BatchNorm
per-sample trap, and how alike the feature columns are.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from tensor_features.trainer.fitting import MLPFeatures
from tensor_features.trainer.model import (
    Loss, batched_derivative, derivative_by_vmap, linear_model, loss_terms, make_feature_derivatives, make_features,
    mse)


# -- observation point: the update outside no_grad ----------------------------------------

@dataclass
class RebindEpoch:
    epoch: int
    loss: float | None  # None once w.grad is None and training cannot go on
    is_leaf: bool
    grad_fn: str | None


@dataclass
class OutsideNoGrad:
    in_place_error: str | None  # what `w -= lr * w.grad` outside no_grad raised (None: nothing)
    rebinding: list[RebindEpoch]


def update_outside_no_grad(phi: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, lr: float) -> OutsideNoGrad:
    """Run the original update without torch.no_grad(), both ways it is usually written."""
    w = w0.detach().clone().requires_grad_()
    loss = mse(phi @ w, y)
    loss.backward()
    in_place_error = None
    try:
        w -= lr * w.grad  # in place, recorded by autograd: refused for a leaf
    except RuntimeError as err:
        in_place_error = str(err)

    w = w0.detach().clone().requires_grad_()
    epochs = []
    for epoch in range(2):
        loss = mse(phi @ w, y)
        loss.backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the non-leaf .grad warning; the report says it instead
            grad = w.grad
        if grad is None:
            epochs.append(RebindEpoch(epoch, None, w.is_leaf, type(w.grad_fn).__name__))
            break
        w = w - lr * grad  # recorded: the new w is an output of SubBackward0, not a leaf
        epochs.append(RebindEpoch(epoch, loss.item(), w.is_leaf, type(w.grad_fn).__name__))
    return OutsideNoGrad(in_place_error, epochs)


# -- observation point: what create_graph=True is for ----------------------------------------

@dataclass
class CreateGraphCheck:
    """w.grad of a derivative loss three ways, at one w."""

    with_graph: torch.Tensor  # create_graph=True: the whole gradient
    data_only: torch.Tensor  # the data term mean((f − y)²) alone
    without_graph: torch.Tensor  # create_graph=False (retain_graph=True so that backward can run)
    by_formula: torch.Tensor  # weight · 2/n Φ′ᵀ(Φ′w − t): the derivative term's gradient, written out
    slope_requires_grad: tuple[bool, bool]  # f′.requires_grad with and without create_graph
    freed_error: str | None  # loss.backward() after autograd.grad with neither create_ nor retain_graph


def create_graph_check(loss: Loss, x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, degree: int,
                       basis: str) -> CreateGraphCheck:
    features = lambda inputs: make_features(inputs, degree, basis)  # noqa: E731

    def gradient(create_graph: bool, retain_graph: bool | None = None, data_only: bool = False):
        w = w0.detach().clone().requires_grad_()
        terms = loss_terms(loss, linear_model(features, w), x, y, create_graph, retain_graph)
        (terms.data if data_only else terms.total).backward(inputs=[w])
        return w.grad, terms

    with_graph, terms = gradient(create_graph=True)
    without_graph, terms_without = gradient(create_graph=False, retain_graph=True)
    data_only, _ = gradient(create_graph=True, data_only=True)
    slope_grad = (terms.derivative.requires_grad, terms_without.derivative.requires_grad)
    freed_error = None
    try:
        gradient(create_graph=False)
    except RuntimeError as err:
        freed_error = str(err)
    phi_prime = make_feature_derivatives(x, degree, basis)
    by_formula = loss.weight * 2 / len(x) * phi_prime.T @ (phi_prime @ w0 - loss.derivative_target(x))
    return CreateGraphCheck(with_graph, data_only, without_graph, by_formula, slope_grad, freed_error)


# -- observation point: f′ two ways, and the BatchNorm trap ------------------------------------

@dataclass
class DerivativeRoutes:
    """f′(x) at the trained w by the batched VJP, by torch.func, and from the formula Φ′w."""

    batched: torch.Tensor
    vmapped: torch.Tensor
    formula: torch.Tensor | None  # None for a learned extractor

    @property
    def vmap_gap(self) -> float:
        return (self.batched - self.vmapped).abs().max().item()

    @property
    def formula_gap(self) -> float | None:
        return None if self.formula is None else (self.batched - self.formula).abs().max().item()


def derivative_routes(features: Callable, w: torch.Tensor, x: torch.Tensor,
                      phi_prime: torch.Tensor | None = None) -> DerivativeRoutes:
    f = linear_model(features, w.detach())
    _, batched = batched_derivative(f, x, create_graph=False)
    formula = None if phi_prime is None else phi_prime @ w.detach()
    return DerivativeRoutes(batched, derivative_by_vmap(f, x).detach(), formula)


@dataclass
class BatchNormTrap:
    """The extractor with BatchNorm in train mode: its sum-trick f′ against the batch Jacobian."""

    sum_trick: torch.Tensor  # grad(f(x).sum(), x): row i = Σ_j ∂f_j/∂x_i
    diagonal: torch.Tensor  # ∂f_i/∂x_i: the diagonal of jacrev over the whole batch
    column_sums: torch.Tensor  # Σ_j J[j, i], from the same Jacobian
    vmap_error: str | None  # what vmap(grad(f_one)) says in train mode
    vmap_error_replaced: str | None  # ... after torch.func.replace_all_batch_norm_modules_
    eval_gap: float  # max |sum trick - diagonal| in eval mode (running statistics)

    @property
    def gap(self) -> float:
        return (self.sum_trick - self.diagonal).abs().max().item()

    @property
    def column_gap(self) -> float:
        return (self.sum_trick - self.column_sums).abs().max().item()


def batch_jacobian(extractor: MLPFeatures, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """J[j, i] = ∂f(x)_j/∂x_i over the whole batch, with torch.func.jacrev.

    BatchNorm updates its running statistics in place; a torch.func transform refuses to mutate
    a tensor it did not receive, so the buffers (copies) are passed in as an input.
    """
    params = {name: p.detach() for name, p in extractor.named_parameters()}
    buffers = {name: b.clone() for name, b in extractor.named_buffers()}

    def f(inputs, buffers):
        return torch.func.functional_call(extractor, (params, buffers), (inputs,)) @ w

    n = x.shape[0]
    return torch.func.jacrev(f)(x, buffers).reshape(n, n)


def batchnorm_trap(extractor: MLPFeatures, w: torch.Tensor, x: torch.Tensor) -> BatchNormTrap:
    w = w.detach()
    extractor.train()
    jacobian = batch_jacobian(extractor, w, x)
    scratch = copy.deepcopy(extractor)  # the sum trick's forward would update the running statistics
    _, sum_trick = batched_derivative(linear_model(scratch, w), x, create_graph=False)
    errors = []
    for replace in (False, True):
        model = copy.deepcopy(extractor)
        if replace:
            torch.func.replace_all_batch_norm_modules_(model)  # no running statistics to update
        try:
            derivative_by_vmap(linear_model(model, w), x)
            errors.append(None)
        except (RuntimeError, ValueError) as err:
            errors.append(str(err))
    scratch.eval()
    _, eval_sum = batched_derivative(linear_model(scratch, w), x, create_graph=False)
    eval_model = lambda inputs: scratch(inputs) @ w  # noqa: E731
    eval_jacobian = torch.func.jacrev(eval_model)(x).reshape(x.shape[0], x.shape[0])
    eval_gap = (eval_sum.flatten() - eval_jacobian.diagonal()).abs().max().item()
    return BatchNormTrap(sum_trick.flatten(), jacobian.diagonal().detach(), jacobian.sum(0).detach(),
                         errors[0], errors[1], eval_gap)


# -- observation point: feature dimension vs convergence -------------------------------------

@dataclass
class SweepRow:
    degree: int
    final_loss: float | None
    optimum_loss: float
    epochs_to_1pct: int | None
    condition_number: float
    max_stable_lr: float
    diverged_at: int | None
    max_cosine: float  # the largest |cosine| between two columns of Φ (0 for a single column)
    within_floor: bool = False  # "within" used the tolerance eps × mean(y²), not 1% (an optimum of about 0)


def max_column_cosine(phi: torch.Tensor) -> float:
    """How alike the two most alike columns of Φ are: max |cos| over pairs of columns."""
    columns = phi.double() / phi.double().norm(dim=0)
    cosines = (columns.T @ columns).abs().fill_diagonal_(0)  # a column's cosine with itself is 1
    return cosines.max().item()

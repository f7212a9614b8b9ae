"""Tensor Feature Trainer: the original training loop on polynomial features, compared with the exact answer.

    python -m tensor_features.train                  # the original: manual update vs torch.optim.SGD
    python -m tensor_features.train --loss sobolev   # + β·mean((f′ − 2x)²): f′ by a batched VJP, a double backward
    python -m tensor_features.train --loss smooth    # + λ·mean(f′²): a slope penalty
    python -m tensor_features.train --sweep          # feature dimension vs convergence speed
    python -m tensor_features.train --no-zero-grad   # forget w.grad.zero_()
    python -m tensor_features.train --outside-no-grad
    python -m tensor_features.train --basis mlp --batchnorm --loss sobolev   # the per-sample trap
    python -m tensor_features.train --basis legendre --lr auto --plot plots
    python -m tensor_features.train --n 4194304 --fast   # same loop, loss compiled

The data are y = x² + noise on [-1, 1]; the model is f(x) = Φ(x) w with Φ = [x, x², x³] (--degree
3). With a fixed basis every loss here is a quadratic in w, so its exact minimum is one
least-squares solve away: every run is compared with it. The mathematics live in tensor_features/model.py; this file runs the training
loop (run() returns a RunResult) and prints the report (report()).
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

import torch

from tensor_features.cli import device_or_exit
from tensor_features.config import TrainConfig, build_parser, config_from_args
from tensor_features.load_data import load_data
from tensor_features.model import (
    DerivativeRows, Loss, LossTerms, Optimum, batched_derivative, derivative_by_vmap, epochs_to_within,
    initial_weights, least_squares_optimum, linear_model, loss_terms, make_feature_derivatives, make_features, mse)

BATCHNORM_MAX_N = 2048  # the trap builds the n×n batch Jacobian


class UsageError(Exception):
    """A setting that parses but cannot run (main turns it into one line and exit 2)."""


# -- one epoch --------------------------------------------------------------------------------

def manual_step(phi: torch.Tensor, y: torch.Tensor, w: torch.Tensor, lr: float,
                zero_grad: bool = True) -> float:
    """One epoch of the original loop. Returns the loss before the update."""
    pred = phi @ w
    loss = ((pred - y) ** 2).mean()

    loss.backward()

    # Wrap in torch.no_grad(): w requires grad, but the update itself must not be recorded.
    with torch.no_grad():
        w -= lr * w.grad
        if zero_grad:
            w.grad.zero_()  # without this, next epoch's backward adds to this gradient
    return loss.item()


def sgd_step(phi: torch.Tensor, y: torch.Tensor, w: torch.Tensor, optimizer: torch.optim.Optimizer,
             zero_grad: bool = True) -> float:
    """One epoch with torch.optim.SGD: zero_grad(), backward(), step()."""
    if zero_grad:
        optimizer.zero_grad()
    loss = mse(phi @ w, y)
    loss.backward()
    optimizer.step()  # w.add_(w.grad, alpha=-lr) under no_grad: manual_step's update, fused
    return loss.item()


def derivative_step(loss: Loss, features: Callable, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                    lr: float, zero_grad: bool = True,
                    optimizer: torch.optim.Optimizer | None = None) -> tuple[float, float]:
    """One epoch of a loss that contains f′(x). Returns (loss, its data term) before the update.

    The forward pass already contains a backward: f′ = autograd.grad(f(x).sum(), x,
    create_graph=True) inside loss_terms. So terms.total.backward() differentiates through a
    derivative: a double backward.
    """
    if optimizer is not None and zero_grad:
        optimizer.zero_grad()
    terms = loss_terms(loss, linear_model(features, w), x, y)
    terms.total.backward(inputs=[w])  # x requires grad too (for f′); only w is trained
    if optimizer is not None:
        optimizer.step()
    else:
        with torch.no_grad():  # the original update
            w -= lr * w.grad
            if zero_grad:
                w.grad.zero_()
    return terms.total.item(), terms.data.item()


@dataclass
class FitResult:
    update: str
    losses: list[float] = field(default_factory=list)  # loss at each epoch, before its update
    data_losses: list[float] | None = None  # its data term mean((f − y)²), for losses with f′
    w: torch.Tensor | None = None
    diverged_at: int | None = None  # first epoch whose loss was not finite
    seconds: float = 0.0  # wall time of the whole fit
    first_epoch_seconds: float = 0.0
    compiled_in_first_epoch: bool = False  # the --fast path's first use of torch.compile

    @property
    def final_loss(self) -> float:
        return self.losses[-1]

    @property
    def epoch_ms(self) -> float | None:
        """Mean time of the epochs after the first (which may compile or warm up)."""
        epochs = len(self.losses)
        return None if epochs < 2 else (self.seconds - self.first_epoch_seconds) / (epochs - 1) * 1e3


def _train(label: str, w0: torch.Tensor, lr: float, epochs: int, update: str, step: Callable,
           parameters: Callable = lambda w: [w], keep_data: bool = False) -> FitResult:
    """The epoch loop every fit shares: step(w, optimizer) until epochs or a non-finite loss."""
    w = w0.detach().clone().requires_grad_()
    optimizer = torch.optim.SGD(parameters(w), lr=lr) if update == "sgd" else None
    result = FitResult(label, data_losses=[] if keep_data else None)
    start = time.perf_counter()
    for epoch in range(epochs):
        value = step(w, optimizer)
        total, data = value if isinstance(value, tuple) else (value, value)
        if not math.isfinite(total):
            result.diverged_at = epoch
            break
        result.losses.append(total)
        if keep_data:
            result.data_losses.append(data)
        if epoch == 0:
            result.first_epoch_seconds = time.perf_counter() - start
    result.seconds = time.perf_counter() - start
    result.w = w.detach()
    return result


def fit(phi: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, lr: float, epochs: int,
        update: str = "manual", zero_grad: bool = True, fast: FastLoss | None = None) -> FitResult:
    """Train w from a copy of w0 on the original loss with the manual or the SGD update.

    With `fast` (see FastLoss), the same updates run on the compiled loss instead of the original.
    """
    def step(w, optimizer):
        if fast is not None:
            return fast.sgd_step(w, optimizer, zero_grad) if optimizer else fast.manual_step(w, lr, zero_grad)
        return sgd_step(phi, y, w, optimizer, zero_grad) if optimizer else manual_step(phi, y, w, lr, zero_grad)

    compiling = fast is not None and fast.needs_compiling
    result = _train(update if fast is None else f"{update} --fast", w0, lr, epochs, update, step)
    result.compiled_in_first_epoch = compiling
    return result


def fit_loss(loss: Loss, features: Callable, x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, lr: float,
             epochs: int, update: str = "manual", zero_grad: bool = True) -> FitResult:
    """Train w on a loss with a derivative term (sobolev, smooth): derivative_step every epoch."""
    def step(w, optimizer):
        return derivative_step(loss, features, x, y, w, lr, zero_grad, optimizer)

    return _train(update, w0, lr, epochs, update, step, keep_data=True)


# -- the fast path (--fast): same loss, same autograd gradient, fewer passes over memory --------

def rows_loss(w: torch.Tensor, phi_rows: torch.Tensor, y_flat: torch.Tensor) -> torch.Tensor:
    """The original loss mean((Φw - y)²), with Φ stored as d rows of n values.

    Φw is written as the sum of rows w_k Φ_k: elementwise work that torch.compile can fuse
    with the loss into one kernel (bench row 3 measures the epoch against a memory floor). The
    original `phi @ w` with Φ as n rows of 3 is a skinny matrix product, a separate kernel.
    """
    prediction = sum(w[k] * phi_rows[k] for k in range(phi_rows.shape[0]))
    return mse(prediction, y_flat)


class FastLoss:
    """The --fast path: rows_loss over Φ stored feature by feature, compiled with torch.compile.

    The update lines are the original's; only the loss changed form. The gradient still comes
    from autograd: AOTAutograd traces rows_loss's backward and the compiler emits code for both.
    The first epoch compiles (seconds); fit records how long it took.
    """

    def __init__(self, phi: torch.Tensor, y: torch.Tensor, compile: bool = True):
        self.phi_rows = phi.detach().T.contiguous()  # no copy when Φ is already stored row by row
        self.y_flat = y.detach().reshape(-1)
        self.loss_fn = torch.compile(rows_loss, dynamic=False) if compile else rows_loss
        self.needs_compiling = compile  # until the first step has run

    def manual_step(self, w: torch.Tensor, lr: float, zero_grad: bool = True) -> float:
        loss = self.loss_fn(w, self.phi_rows, self.y_flat)
        loss.backward()
        with torch.no_grad():  # the original update, as in manual_step
            w -= lr * w.grad
            if zero_grad:
                w.grad.zero_()
        self.needs_compiling = False
        return loss.item()

    def sgd_step(self, w: torch.Tensor, optimizer: torch.optim.Optimizer, zero_grad: bool = True) -> float:
        if zero_grad:
            optimizer.zero_grad()
        loss = self.loss_fn(w, self.phi_rows, self.y_flat)
        loss.backward()
        optimizer.step()
        self.needs_compiling = False
        return loss.item()


def rows_layout(phi: torch.Tensor) -> torch.Tensor:
    """The same n×d matrix Φ, stored feature by feature: a (d, n) tensor seen through .T."""
    return phi.T.contiguous().T


# -- inference, separated from training -----------------------------------------------------

def predict(features, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Predictions for new x with autograd off: no graph, no saved tensors, inference tensors out."""
    with torch.inference_mode():
        return features(x) @ w


@dataclass
class Curve:
    """The fitted function on new inputs: f(x_new) from predict(), f′(x_new) from a batched VJP."""

    x: torch.Tensor
    values: torch.Tensor
    slopes: torch.Tensor


def fitted_curve(features: Callable, w: torch.Tensor, points: int = 201) -> Curve:
    x_new = torch.linspace(-1, 1, points, device=w.device).unsqueeze(1)  # new inputs, 0.01 apart
    _, slopes = batched_derivative(linear_model(features, w), x_new, create_graph=False)
    return Curve(x_new, predict(features, w, x_new), slopes)


# -- the learned extractor ------------------------------------------------------------------

class MLPFeatures(torch.nn.Module):
    """A small MLP whose last hidden layer is the feature map Φ(x) of width `degree`."""

    def __init__(self, degree: int, hidden: int = 16, batchnorm: bool = False):
        super().__init__()
        norm = [torch.nn.BatchNorm1d(hidden)] if batchnorm else []
        self.body = torch.nn.Sequential(
            torch.nn.Linear(1, hidden), *norm, torch.nn.Tanh(), torch.nn.Linear(hidden, degree), torch.nn.Tanh()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def fit_mlp(x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, lr: float, epochs: int, seed: int,
            loss: Loss = Loss(), batchnorm: bool = False) -> tuple[FitResult, MLPFeatures]:
    """Train the extractor and the linear head together, end to end, with SGD."""
    torch.manual_seed(seed)
    extractor = MLPFeatures(w0.shape[0], batchnorm=batchnorm).to(x.device)

    def step(w, optimizer):
        optimizer.zero_grad()
        terms = loss_terms(loss, linear_model(extractor, w), x, y)  # f′ too, for sobolev and smooth
        terms.total.backward(inputs=optimizer.param_groups[0]["params"])  # into w and through Φ into the MLP
        optimizer.step()
        return terms.total.item(), terms.data.item()

    result = _train("mlp", w0, lr, epochs, "sgd", step, parameters=lambda w: [w, *extractor.parameters()],
                    keep_data=loss.uses_derivative)
    return result, extractor


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


def max_column_cosine(phi: torch.Tensor) -> float:
    """How alike the two most alike columns of Φ are: max |cos| over pairs of columns."""
    columns = phi.double() / phi.double().norm(dim=0)
    cosines = (columns.T @ columns).abs().fill_diagonal_(0)  # a column's cosine with itself is 1
    return cosines.max().item()


# -- a whole run ------------------------------------------------------------------------------

@dataclass
class Problem:
    """The fixed-basis problem of one run: data, features, loss and its exact optimum."""

    x: torch.Tensor
    y: torch.Tensor
    degree: int
    basis: str  # 'monomial' or 'legendre'
    loss: Loss
    phi: torch.Tensor
    optimum: Optimum

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        return make_features(inputs, self.degree, self.basis)


def exact_problem(x: torch.Tensor, y: torch.Tensor, degree: int, basis: str, loss: Loss,
                  rows_layout_for_fast: bool = False) -> Problem:
    """Φ (and Φ′ for a derivative loss) and the exact optimum of the loss, checked to be usable."""
    phi = make_features(x, degree, basis)
    if rows_layout_for_fast:
        phi = rows_layout(phi)  # same Φ, stored feature by feature for FastLoss (no second copy)
    rows = None
    if loss.uses_derivative:
        rows = DerivativeRows(make_feature_derivatives(x, degree, basis), loss.derivative_target(x), loss.weight)
    try:
        optimum = least_squares_optimum(phi, y, derivative=rows)
    except torch.linalg.LinAlgError:
        raise UsageError(f"--degree {degree} --basis {basis}: the normal equations are singular in float64; "
                         "use a lower degree or more --n") from None
    eigenvalues = optimum.hessian_eigenvalues
    if not (math.isfinite(optimum.loss) and torch.isfinite(optimum.w).all() and torch.isfinite(eigenvalues).all()):
        raise UsageError(f"--degree {degree}: the exact optimum is not a finite number in float64")
    if eigenvalues[0] <= 0:
        raise UsageError(f"--degree {degree} --basis {basis}: the Hessian is singular in float64 "
                         f"(smallest eigenvalue {eigenvalues[0].item():.3g}); use a lower degree or --basis legendre")
    return Problem(x, y, degree, basis, loss, phi, optimum)


def resolve_lr(lr: float | str, optimum: Optimum) -> float:
    return optimum.best_lr if lr == "auto" else float(lr)


def degree_sweep(config: TrainConfig, x: torch.Tensor, y: torch.Tensor, loss: Loss,
                 degrees=range(1, 7)) -> list[SweepRow]:
    rows = []
    basis = "legendre" if config.basis == "legendre" else "monomial"
    for degree in degrees:
        problem = exact_problem(x, y, degree, basis, loss)
        lr = resolve_lr(config.lr, problem.optimum)
        w0 = initial_weights(degree, config.seed, x.device)
        if loss.uses_derivative:
            result = fit_loss(loss, problem.features, x, y, w0, lr, config.epochs)
        else:
            result = fit(problem.phi, y, w0, lr, config.epochs)
        rows.append(SweepRow(degree, result.final_loss if result.losses else None, problem.optimum.loss,
                             epochs_to_within(result.losses, problem.optimum.loss),
                             problem.optimum.condition_number, problem.optimum.max_stable_lr, result.diverged_at,
                             max_column_cosine(problem.phi)))
    return rows


@dataclass
class RunResult:
    """Everything one run computed; report() prints it, plots and bench read its fields."""

    config: TrainConfig
    device: torch.device
    problem: Problem
    lr: float
    fits: list[FitResult] = field(default_factory=list)  # one per --update, on the fixed basis
    mse_problem: Problem | None = None  # for a derivative loss: the original mse problem on the same data
    mse_fit: FitResult | None = None  # ... and the original loop on it, from the same w0
    mlp: FitResult | None = None
    extractor: MLPFeatures | None = None
    outside_no_grad: OutsideNoGrad | None = None
    create_graph: CreateGraphCheck | None = None
    routes: DerivativeRoutes | None = None
    trap: BatchNormTrap | None = None
    curve: Curve | None = None
    mse_curve: Curve | None = None
    sweep: list[SweepRow] | None = None

    @property
    def optimum(self) -> Optimum:
        return self.problem.optimum

    @property
    def loss(self) -> Loss:
        return self.problem.loss


def loss_of(config: TrainConfig) -> Loss:
    weight = {"mse": 0.0, "sobolev": config.beta, "smooth": config.penalty}[config.loss]
    return Loss(config.loss, weight)


def run(config: TrainConfig, device: torch.device) -> RunResult:
    """Train as the config says, on one device; compute every figure the report prints."""
    x, y = load_data(config.n, config.noise, config.seed, device)
    loss = loss_of(config)
    basis = "monomial" if config.basis == "mlp" else config.basis
    problem = exact_problem(x, y, config.degree, basis, loss, rows_layout_for_fast=config.fast)
    lr = resolve_lr(config.lr, problem.optimum)
    w0 = initial_weights(config.degree, config.seed, device)
    result = RunResult(config, device, problem, lr)

    if config.outside_no_grad:
        result.outside_no_grad = update_outside_no_grad(problem.phi, y, w0, lr)
        return result

    zero_grad = not config.no_zero_grad
    updates = ["manual", "sgd"] if config.update == "both" else [config.update]
    if loss.uses_derivative:
        result.fits = [fit_loss(loss, problem.features, x, y, w0, lr, config.epochs, update, zero_grad)
                       for update in updates]
        result.mse_problem = exact_problem(x, y, config.degree, basis, Loss())
        result.mse_fit = fit(result.mse_problem.phi, y, w0, lr, config.epochs, "manual", zero_grad)
        result.create_graph = create_graph_check(loss, x, y, w0, config.degree, basis)
    else:
        fast = FastLoss(problem.phi, y) if config.fast else None
        result.fits = [fit(problem.phi, y, w0, lr, config.epochs, update, zero_grad, fast) for update in updates]

    if config.basis == "mlp":
        result.mlp, result.extractor = fit_mlp(x, y, w0, lr, config.epochs, config.seed, loss, config.batchnorm)
        if config.batchnorm:
            result.trap = batchnorm_trap(result.extractor, result.mlp.w, x)

    fitted = result.fits[0]
    if fitted.diverged_at is None:
        result.curve = fitted_curve(problem.features, fitted.w)
        if loss.uses_derivative:
            phi_prime = make_feature_derivatives(x, config.degree, basis)
            result.routes = derivative_routes(problem.features, fitted.w, x, phi_prime)
            if result.mse_fit.diverged_at is None:
                result.mse_curve = fitted_curve(problem.features, result.mse_fit.w)
    if config.sweep:
        result.sweep = degree_sweep(config, x, y, loss)
    return result


# -- the report -------------------------------------------------------------------------------

def _vector(t: torch.Tensor, digits: int = 4) -> str:
    return "[" + ", ".join(f"{v:.{digits}f}" for v in t.flatten().tolist()) + "]"


def _small(t: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in t.flatten().tolist()) + "]"


def name(result: FitResult) -> str:
    return f"{result.update:>13}" if result.update.endswith("--fast") else f"{result.update:>6}"


def gap_text(loss: float, optimum: float) -> str:
    """How far a float32 training loss is from the float64 optimum, signed honestly."""
    gap = loss - optimum
    if gap >= 0:
        return f"{gap:.6f} above the optimum"
    return f"{-gap:.2g} below the float64 optimum (the training loss is float32 arithmetic)"


def describe_fit(result: FitResult, optimum: Optimum, lr: float) -> str:
    if result.diverged_at is not None:
        return (f"{name(result)}: diverged at epoch {result.diverged_at}: the loss stopped being a finite number "
                f"(lr {lr:.4g}, 2/λmax = {optimum.max_stable_lr:.4g})")
    within = epochs_to_within(result.losses, optimum.loss)
    reached = f"within 1% of it from epoch {within}" if within is not None else \
        f"not within 1% of it in {len(result.losses)} epochs"
    return f"{name(result)}: final loss {result.final_loss:.6f}, {gap_text(result.final_loss, optimum.loss)}, {reached}"


def describe_time(result: FitResult) -> str:
    epochs = len(result.losses)
    if epochs < 2:
        return f"{name(result)}: {epochs} epoch in {result.seconds:.3f} s"
    return (f"{name(result)}: {epochs} epochs in {result.seconds:.3f} s: the first {result.first_epoch_seconds:.3f} s"
            f"{' (torch.compile compiling)' if result.compiled_in_first_epoch else ''}, "
            f"then {result.epoch_ms:.3f} ms/epoch")


def convergence_lines(optimum: Optimum, lr: float) -> list[str]:
    """What limits gradient descent at this lr, computed from the Hessian's eigenvalues."""
    eigenvalues = optimum.hessian_eigenvalues
    low, high = eigenvalues[0].item(), eigenvalues[-1].item()
    kappa, rho = optimum.condition_number, optimum.contraction(lr)
    limiting = optimum.limiting_eigenvalue(lr)
    best_rho = (kappa - 1) / (kappa + 1)
    lines = [f"Hessian eigenvalues λmin {low:.4g}, λmax {high:.4g}: condition number κ = {kappa:.4g}"]
    if rho >= 1:
        lines.append(f"lr {lr:.4g} ≥ 2/λmax = {optimum.max_stable_lr:.4g}: the steepest direction of w − w* "
                     f"grows by |1 − lr·λmax| = {rho:.4g} per epoch")
        return lines
    if limiting == low:
        lines.append(f"lr {lr:.4g} is {optimum.max_stable_lr / lr:.3g}× below the stability limit 2/λmax = "
                     f"{optimum.max_stable_lr:.4g}; the slowest direction is the flattest one: w − w* shrinks "
                     f"there by 1 − lr·λmin = {rho:.4f} per epoch")
    else:
        lines.append(f"lr {lr:.4g} is above 2/(λmax+λmin) = {optimum.best_lr:.4g}: the steepest direction "
                     f"overshoots and limits, |1 − lr·λmax| = {rho:.4f} per epoch")
    if abs(lr - optimum.best_lr) <= 1e-9 * optimum.best_lr:
        lines.append(f"this is the best fixed step: κ = {kappa:.4g} limits it to ρ = (κ−1)/(κ+1) = {best_rho:.4f}")
    else:
        lines.append(f"the best fixed step, 2/(λmax+λmin) = {optimum.best_lr:.4g} (--lr auto), would give "
                     f"ρ = (κ−1)/(κ+1) = {best_rho:.4f}: κ sets that floor for every fixed lr")
    return lines


def print_logs(results: list[FitResult], log_every: int, epochs: int, out: TextIO) -> None:
    names = "   |   ".join(f"{r.update:<22}" for r in results)
    print(f"  {names}", file=out)
    for epoch in range(0, epochs, log_every):
        cells = []
        for r in results:
            cells.append(f"Epoch {epoch}, Loss {r.losses[epoch]:.4f}" if epoch < len(r.losses) else "(stopped)")
        print("  " + "   |   ".join(f"{c:<22}" for c in cells), file=out)


def compare_updates(manual: FitResult, sgd: FitResult, out: TextIO) -> None:
    """Manual and SGD run the same arithmetic; say how far apart they ended."""
    steps = min(len(manual.losses), len(sgd.losses))
    loss_gap = max((abs(a - b) for a, b in zip(manual.losses[:steps], sgd.losses[:steps])), default=0.0)
    w_gap = (manual.w - sgd.w).abs().max().item()
    print(f"  largest |loss_manual - loss_sgd| over {steps} epochs: {loss_gap:.3g};  "
          f"max |w_manual - w_sgd|: {w_gap:.3g}", file=out)
    if loss_gap == 0 and w_gap == 0:
        print("  identical: SGD without momentum or weight decay is the same update under no_grad.", file=out)
    else:
        print("  not bit-identical: SGD's step is one operation, w.add_(w.grad, alpha=-lr); the original\n"
              "  w -= lr * w.grad first stores lr * w.grad as a float32 tensor, then subtracts, so the last bit\n"
              f"  can round differently. The figures above are how far apart that left them after {steps} epochs.",
              file=out)


def report(result: RunResult, out: TextIO | None = None) -> None:
    """Print a run: the setting, the exact answer, the training, and each observation asked for."""
    out = out or sys.stdout
    config, optimum, lr, loss = result.config, result.optimum, result.lr, result.loss

    def say(text: str = "") -> None:
        print(text, file=out)

    say(f"tensor_features.train   torch {torch.__version__} · device {result.device} · n={config.n} "
        f"noise={config.noise} degree={config.degree} basis={config.basis} loss={config.loss} seed={config.seed}")
    say(f"loss: {loss.formula}")
    auto = " (auto: 2/(λmax+λmin) of the Hessian)" if config.lr == "auto" else ""
    say(f"lr = {lr:.6g}{auto}; largest stable lr 2/λmax = {optimum.max_stable_lr:.4g}; "
        f"Hessian condition number {optimum.condition_number:.4g}")
    if loss.uses_derivative:
        symbol = "β" if loss.name == "sobolev" else "λ"
        say(f"exact optimum (least squares on the stacked rows [Φ; √{symbol} Φ′], normal equations in float64): "
            f"loss {optimum.loss:.6f} = data {optimum.data_loss:.6f} + {symbol}·{optimum.derivative_loss:.6f}, "
            f"w* = {_vector(optimum.w)}")
        mse_optimum = result.mse_problem.optimum
        say(f"  the mse optimum on the same data: loss {mse_optimum.loss:.6f}, w* = {_vector(mse_optimum.w)}, "
            f"condition number {mse_optimum.condition_number:.4g}")
    else:
        say(f"least squares (normal equations ΦᵀΦ w = Φᵀy in float64): loss {optimum.loss:.6f}, "
            f"w* = {_vector(optimum.w)}")

    if result.outside_no_grad is not None:
        report_outside_no_grad(result.outside_no_grad, out)
        return

    if result.create_graph is not None:
        report_create_graph(result.create_graph, loss, out)

    shown = result.fits + ([result.mlp] if result.mlp else [])
    title = "without w.grad.zero_(): gradients accumulate" if config.no_zero_grad else "training"
    say(f"\n{title} ({config.epochs} epochs, log every {config.log_every}):")
    print_logs(shown, config.log_every, config.epochs, out)
    say()
    for fit_result in result.fits:
        say(describe_fit(fit_result, optimum, lr))
    if result.mlp is not None:
        say(describe_mlp(result.mlp, optimum))
    for fit_result in shown:
        say(describe_time(fit_result))
    if len(result.fits) == 2:
        compare_updates(result.fits[0], result.fits[1], out)
    if result.mse_fit is not None:
        report_against_mse(result, out)

    if not config.no_zero_grad:
        say(f"\nconvergence at lr {lr:.4g} ({loss.name}):")
        for line in convergence_lines(optimum, lr):
            say("  " + line)
        if result.mse_problem is not None:
            mse_optimum = result.mse_problem.optimum
            say(f"  the derivative rows moved λmin {mse_optimum.hessian_eigenvalues[0].item():.4g} → "
                f"{optimum.hessian_eigenvalues[0].item():.4g} and κ {mse_optimum.condition_number:.4g} → "
                f"{optimum.condition_number:.4g}; mse at the same lr shrinks by "
                f"{mse_optimum.contraction(lr):.4f} per epoch")

    if result.curve is not None:
        curve = result.curve
        at_half = int(torch.argmin((curve.x - 0.5).abs()))
        say(f"\npredict() under inference_mode: is_inference={curve.values.is_inference()}, "
            f"requires_grad={curve.values.requires_grad}, fit at x=0.5: {curve.values[at_half].item():.4f} "
            f"(the clean curve x²: 0.25)")
        if loss.uses_derivative:
            say(f"f′(0.5) = {curve.slopes[at_half].item():.4f} (the clean curve's 2x: 1.0)"
                + (f"; the mse fit's f′(0.5) = {result.mse_curve.slopes[at_half].item():.4f}"
                   if result.mse_curve is not None else ""))
    if result.routes is not None:
        routes = result.routes
        say(f"f′ at the {len(routes.batched)} training x, two ways: batched VJP vs torch.func.vmap(grad(f_one)): "
            f"max |difference| {routes.vmap_gap:.3g}; vs Φ′w from the formula: {routes.formula_gap:.3g}")
    if result.trap is not None:
        report_trap(result.trap, out)
    if result.sweep is not None:
        report_sweep(result.sweep, config, loss, out)


def describe_mlp(result: FitResult, optimum: Optimum) -> str:
    if result.diverged_at is not None:
        return f"{name(result)}: diverged at epoch {result.diverged_at} (the loss stopped being a finite number)"
    return (f"{name(result)}: final loss {result.final_loss:.6f}; a learned extractor has no closed-form optimum "
            f"(the degree-{optimum.w.shape[0]} polynomial's is {optimum.loss:.6f})")


def report_outside_no_grad(observed: OutsideNoGrad, out: TextIO) -> None:
    print("\nUpdating outside torch.no_grad():", file=out)
    if observed.in_place_error is None:
        print("  in place:  w -= lr * w.grad raised nothing", file=out)
    else:
        print(f"  in place:  w -= lr * w.grad raises RuntimeError: {observed.in_place_error}", file=out)
    for epoch in observed.rebinding:
        if epoch.loss is None:
            print(f"  rebinding: epoch {epoch.epoch}: w.grad is None: w is no longer a leaf (is_leaf={epoch.is_leaf}, "
                  f"grad_fn={epoch.grad_fn}); training stops here.", file=out)
        else:
            print(f"  rebinding: epoch {epoch.epoch}: loss {epoch.loss:.4f}; w = w - lr * w.grad gives "
                  f"is_leaf={epoch.is_leaf}, grad_fn={epoch.grad_fn}", file=out)


def report_create_graph(check: CreateGraphCheck, loss: Loss, out: TextIO) -> None:
    symbol = "β" if loss.name == "sobolev" else "λ"
    term = "mean((f′ − 2x)²)" if loss.name == "sobolev" else "mean(f′²)"
    share = check.with_graph - check.data_only
    print(f"\nwhat create_graph=True is for (w.grad at the initial w):", file=out)
    print(f"  f′ = autograd.grad(f(x).sum(), x, create_graph=True): f′.requires_grad = "
          f"{check.slope_requires_grad[0]}, so {symbol}·{term} has a path back to w", file=out)
    print(f"  w.grad of the whole loss      {_vector(check.with_graph)}", file=out)
    print(f"  w.grad of the data term alone {_vector(check.data_only)}", file=out)
    print(f"  their difference              {_vector(share)}  (by formula {symbol}·2/n Φ′ᵀ(Φ′w − t): "
          f"{_vector(check.by_formula)}, max |difference| {(share - check.by_formula).abs().max().item():.2g})",
          file=out)
    print(f"  create_graph=False (retain_graph=True): f′.requires_grad = {check.slope_requires_grad[1]}; "
          f"w.grad {_vector(check.without_graph)}", file=out)
    print(f"    = the data term's alone (max |difference| "
          f"{(check.without_graph - check.data_only).abs().max().item():.2g}): the {symbol} term contributes "
          f"nothing, and training would silently be mse", file=out)
    if check.freed_error is not None:
        print(f"  create_graph=False and no retain_graph: loss.backward() raises RuntimeError: {check.freed_error}",
              file=out)


def report_against_mse(result: RunResult, out: TextIO) -> None:
    """The derivative loss beside the original mse loop on the same data, from the same w0."""
    mse_fit, mse_optimum, fitted = result.mse_fit, result.mse_problem.optimum, result.fits[0]
    print(f"\nthe original mse loop on the same data, lr and initial w, for comparison:", file=out)
    print("  " + describe_fit(mse_fit, mse_optimum, result.lr).strip(), file=out)
    if fitted.epoch_ms and mse_fit.epoch_ms:
        print(f"  per epoch: {result.loss.name} {fitted.epoch_ms:.3f} ms (forward, autograd.grad with "
              f"create_graph, backward through both) vs mse {mse_fit.epoch_ms:.3f} ms: "
              f"{fitted.epoch_ms / mse_fit.epoch_ms:.2f}× (measured here, one run each)", file=out)
    if fitted.diverged_at is None and fitted.data_losses:
        print(f"  {result.loss.name}'s data term mean((f − y)²) ended at {fitted.data_losses[-1]:.6f} "
              f"(its optimum's: {result.optimum.data_loss:.6f}; mse's optimum: {mse_optimum.loss:.6f})", file=out)


def report_trap(trap: BatchNormTrap, out: TextIO) -> None:
    show = min(5, len(trap.sum_trick))
    print(f"\nthe BatchNorm trap (extractor in train mode, the {len(trap.sum_trick)} training x, trained weights):",
          file=out)
    print(f"  sum trick grad(f(x).sum(), x)  {_small(trap.sum_trick[:show])} ...", file=out)
    print(f"  diag of jacrev(f)(x), ∂f_i/∂x_i {_small(trap.diagonal[:show])} ...", file=out)
    print(f"  max |sum trick − diagonal| = {trap.gap:.3g}; max |sum trick − column sums of that Jacobian| = "
          f"{trap.column_gap:.2g}", file=out)
    print("  the sum trick returns Σ_j ∂f_j/∂x_i: each x_i moves the batch mean and variance and so every f_j."
          "\n  Trust the diagonal: it is ∂f_i/∂x_i by definition; a loss built on the sum trick trains on the column"
          " sums.", file=out)
    if trap.vmap_error is not None:
        print(f"  vmap(grad(f_one)) in train mode raises: {trap.vmap_error}", file=out)
    if trap.vmap_error_replaced is not None:
        print(f"  after torch.func.replace_all_batch_norm_modules_ (no running statistics), each vmapped sample is a "
              f"batch of one: {trap.vmap_error_replaced}", file=out)
    print(f"  eval mode (running statistics, samples independent): max |sum trick − diagonal| = {trap.eval_gap:.2g}",
          file=out)


def report_sweep(rows: list[SweepRow], config: TrainConfig, loss: Loss, out: TextIO) -> None:
    print(f"\nfeature dimension vs convergence ({loss.name}; same lr, epochs and seed; manual update):", file=out)
    print(f"  {'D':>2}  {'final loss':>10}  {'optimum':>8}  {'epochs to 1%':>14}  {'κ (Hessian)':>12}  "
          f"{'2/λmax':>8}  {'max |cos| of two Φ columns':>26}", file=out)
    for row in rows:
        final = f"{row.final_loss:.4f}" if row.diverged_at is None else f"div@{row.diverged_at}"
        reached = str(row.epochs_to_1pct) if row.epochs_to_1pct is not None else f"> {config.epochs}"
        print(f"  {row.degree:>2}  {final:>10}  {row.optimum_loss:>8.4f}  {reached:>14}  "
              f"{row.condition_number:>12.4g}  {row.max_stable_lr:>8.4g}  {row.max_cosine:>26.4f}", file=out)
    for label, values in (("κ", [row.condition_number for row in rows]), ("max |cos|", [row.max_cosine for row in rows])):
        grows = all(b > a for a, b in zip(values, values[1:]))
        print(f"  {label} {'grows with every degree' if grows else 'does not grow with every degree'} here.", file=out)


# -- the make run summary -----------------------------------------------------------------------

def verdict(result: RunResult) -> str:
    """One line that sums up the run (the `make run` summary prints it)."""
    loss = result.loss.name
    if result.outside_no_grad is not None:
        observed = result.outside_no_grad
        in_place = "raises RuntimeError" if observed.in_place_error else "raised nothing"
        stopped = next((e.epoch for e in observed.rebinding if e.loss is None), None)
        rebinding = (f"w = w - lr * w.grad leaves w.grad None at epoch {stopped}" if stopped is not None
                     else "w = w - lr * w.grad kept a gradient")
        return f"update outside torch.no_grad(): w -= lr * w.grad {in_place}; {rebinding}"
    parts = []
    for fit_result in result.fits:
        if fit_result.diverged_at is not None:
            parts.append(f"{fit_result.update} diverged at epoch {fit_result.diverged_at}")
            continue
        above = 100 * (fit_result.final_loss - result.optimum.loss) / result.optimum.loss
        within = epochs_to_within(fit_result.losses, result.optimum.loss)
        reached = f"within 1% from epoch {within}" if within is not None else "not within 1%"
        parts.append(f"{fit_result.update} {fit_result.final_loss:.6f} ({above:+.1f}%, {reached})")
    line = (f"{loss} loss, {len(result.fits[0].losses) if result.fits else 0} epochs at lr {result.lr:.4g}: "
            f"{'; '.join(parts)} vs the exact optimum {result.optimum.loss:.6f}")
    if result.mlp is not None:
        line += (f"; mlp diverged at epoch {result.mlp.diverged_at}" if result.mlp.diverged_at is not None
                 else f"; mlp {result.mlp.final_loss:.6f}")
    return line


def write_verdict(result: RunResult) -> None:
    """One JSON line {"verdict": ...} appended to the file LAB_SUMMARY names (`make run` reads it)."""
    summary = os.environ.get("LAB_SUMMARY")
    if not summary:
        return
    with open(summary, "a", encoding="utf-8") as out:
        out.write(json.dumps({"verdict": verdict(result)}, ensure_ascii=False) + "\n")


# -- the command line -------------------------------------------------------------------------

def check_combinations(config: TrainConfig) -> str | None:
    """Settings that parse one by one but do not go together: the one-line reason, or None."""
    if config.degree >= config.n:
        return f"--degree {config.degree} needs more than {config.degree} points (got --n {config.n})"
    if config.batchnorm and config.basis != "mlp":
        return "--batchnorm adds BatchNorm to the learned extractor: use it with --basis mlp"
    if config.batchnorm and config.n > BATCHNORM_MAX_N:
        return f"--batchnorm builds the n×n batch Jacobian: use --n <= {BATCHNORM_MAX_N} (got --n {config.n})"
    if config.loss != "mse" and config.fast:
        return f"--fast compiles the original mse loss only; drop --fast or use --loss mse (got --loss {config.loss})"
    if config.loss != "mse" and config.outside_no_grad:
        return f"--outside-no-grad shows the original mse update; use --loss mse (got --loss {config.loss})"
    if config.fast and config.basis == "mlp":
        return "--fast compiles the fixed-basis loss; the mlp extractor is not on that path"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__)
    config = config_from_args(parser.parse_args(argv))
    device = device_or_exit(parser, config.device)
    problem = check_combinations(config)
    if problem:
        parser.error(problem)
    if config.plot:
        try:
            Path(config.plot).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            parser.error(f"--plot {config.plot}: cannot create the folder ({err.strerror})")
    try:
        result = run(config, device)
    except UsageError as err:
        parser.error(str(err))
    report(result)
    if config.plot:
        from tensor_features.plots import write_plots  # matplotlib only when asked for

        for path in write_plots(Path(config.plot), result):
            print(f"wrote {path}")
    write_verdict(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

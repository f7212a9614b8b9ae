"""One run of the Tensor Feature Trainer: the settings in, a RunResult out, nothing printed.

run() trains as a TrainConfig says and computes every figure the report (report.py) prints and
the plots (plots.py) draw; the sweep fits one problem per feature dimension. A problem whose
exact optimum cannot be had raises problem.ProblemError, for the command line to word.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Sequence

import torch

from tensor_features.config import TrainConfig
from tensor_features.load_data import load_data
from tensor_features.trainer.fast import FastLoss, fit_fast, reference_epoch_ms
from tensor_features.trainer.fitting import (Curve, FitPlan, FitResult, MLPFeatures, fit, fit_loss,
                                             fit_mlp, fitted_curve)
from tensor_features.trainer.losses import LOSSES, Loss
from tensor_features.trainer.model import (Optimum, epochs_to_within, initial_weights,
                                           make_feature_derivatives)
from tensor_features.trainer.observations import (
    BatchNormTrap, CreateGraphCheck, DerivativeRoutes, OutsideNoGrad, SweepRow, batchnorm_trap,
    create_graph_check, derivative_routes, max_column_cosine, update_outside_no_grad)
from tensor_features.trainer.problem import Problem, ProblemError, exact_problem

if TYPE_CHECKING:  # the type only: a single-process run never imports the distributed plumbing
    from tensor_features.trainer.data_parallel import DataParallel

SWEEP_DEGREES = range(1, 7)


@dataclass
class RunResult:
    """Everything one run computed; report.report() prints it, plots and bench read its fields."""

    config: TrainConfig
    device: torch.device
    problem: Problem
    lr: float
    fits: list[FitResult] = field(default_factory=list)  # one per --update, on the fixed basis
    mse_problem: Problem | None = None  # for a derivative loss: the mse problem on the same data
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
    data_parallel: DataParallel | None = None  # under torchrun: this rank's place, else None
    reference_ms: float | None = None  # --fast in one process: the original loop's epoch, timed

    @property
    def optimum(self) -> Optimum:
        return self.problem.optimum

    @property
    def loss(self) -> Loss:
        return self.problem.loss


def loss_of(config: TrainConfig) -> Loss:
    """The --loss, weighted by the flag its registry entry names (mse has none: weight 0)."""
    kind = LOSSES[config.loss]
    return Loss(kind.name, getattr(config, kind.weight_flag) if kind.weight_flag else 0.0)


def resolve_lr(lr: float | str, optimum: Optimum) -> float:
    return optimum.best_lr if lr == "auto" else float(lr)


def within_epoch(losses: list[float], optimum: Optimum) -> int | None:
    """The first epoch within 1% of the optimum, or within its float32 tolerance if larger."""
    return epochs_to_within(losses, optimum.loss, floor=optimum.resolution)


def plan_of(config: TrainConfig, lr: float, update: str = "manual") -> FitPlan:
    return FitPlan(lr, config.epochs, update, zero_grad=not config.no_zero_grad,
                   log_every=config.log_every)


def degree_sweep(config: TrainConfig, x: torch.Tensor, y: torch.Tensor, loss: Loss,
                 degrees: Sequence[int] = SWEEP_DEGREES) -> list[SweepRow]:
    rows = []
    basis = "legendre" if config.basis == "legendre" else "monomial"
    for degree in degrees:
        try:
            problem = exact_problem(x, y, degree, basis, loss)
        except ProblemError as err:
            raise err.in_sweep(degrees) from None
        plan = plan_of(config, resolve_lr(config.lr, problem.optimum))  # --no-zero-grad included
        w0 = initial_weights(degree, config.seed, x.device)
        if loss.uses_derivative:
            result = fit_loss(loss, problem.features, x, y, w0, plan)
        else:
            result = fit(problem.phi, y, w0, plan)
        optimum = problem.optimum
        rows.append(SweepRow(degree, result.final_loss if result.losses else None, optimum.loss,
                             within_epoch(result.losses, optimum),
                             optimum.condition_number, optimum.max_stable_lr, result.diverged_at,
                             max_column_cosine(problem.phi),
                             optimum.resolution > 0.01 * optimum.loss))
    return rows


def run(config: TrainConfig, device: torch.device, world: DataParallel | None = None) -> RunResult:
    """Train as the config says, on one device; compute every figure the report prints.

    With `world` (torchrun), every rank draws all n points (one seeded generator: a rank cannot draw
    its own rows without drawing the ones before them) and computes the exact optimum from them,
    the report's reference; training then sees only this rank's rows.
    """
    x, y = load_data(config.n, config.noise, config.seed, device)
    loss = loss_of(config)
    basis = "monomial" if config.basis == "mlp" else config.basis
    problem = exact_problem(x, y, config.degree, basis, loss, rows_layout_for_fast=config.fast)
    lr = resolve_lr(config.lr, problem.optimum)
    w0 = initial_weights(config.degree, config.seed, device)  # one seed: one w0 on every rank
    result = RunResult(config, device, problem, lr, data_parallel=world)

    if config.outside_no_grad:
        result.outside_no_grad = update_outside_no_grad(problem.phi, y, w0, lr)
        return result

    updates = ["manual", "sgd"] if config.update == "both" else [config.update]
    plans = [plan_of(config, lr, update) for update in updates]
    if loss.uses_derivative:
        result.fits = [fit_loss(loss, problem.features, x, y, w0, plan) for plan in plans]
        result.mse_problem = exact_problem(x, y, config.degree, basis, Loss())
        result.mse_fit = fit(result.mse_problem.phi, y, w0, replace(plans[0], update="manual"))
        result.create_graph = create_graph_check(loss, x, y, w0, config.degree, basis)
    else:
        phi_train, y_train = ((problem.phi, y) if world is None
                              else (world.shard(problem.phi), world.shard(y)))
        if config.fast:
            fast = FastLoss(phi_train, y_train)
            result.fits = [fit_fast(fast, w0, plan, world) for plan in plans]
            if world is None:  # what --fast is measured against: the default run's Φ (n×d)
                result.reference_ms = reference_epoch_ms(problem.phi.contiguous(), y, w0, lr)
        else:
            result.fits = [fit(phi_train, y_train, w0, plan, world) for plan in plans]

    if config.basis == "mlp":
        result.mlp, result.extractor = fit_mlp(x, y, w0, plans[0], config.seed, loss,
                                               config.batchnorm)
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

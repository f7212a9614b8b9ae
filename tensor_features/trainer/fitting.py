"""The training loop: one epoch three ways (the original manual update, torch.optim.SGD, and a
loss with a derivative term), a fit of many epochs as a FitPlan says, inference, and the learned
extractor. The compiled --fast path is fast.py; experiment.py runs these, report.py prints them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

import torch

from tensor_features.trainer.losses import Loss
from tensor_features.trainer.model import batched_derivative, linear_model, loss_terms, mse

if TYPE_CHECKING:  # the type only: a single-process run never imports the distributed plumbing
    from tensor_features.trainer.data_parallel import DataParallel


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
    optimizer.step()  # w.add_(w.grad, alpha=-lr) under no_grad (tests/trainer/test_fitting.py replays it bit for bit)
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


@dataclass(frozen=True)
class FitPlan:
    """How a fit trains, whatever it trains on: the schedule and the update lines."""

    lr: float
    epochs: int
    update: str = "manual"  # 'manual' (the original lines) or 'sgd' (torch.optim.SGD)
    zero_grad: bool = True  # False: leave out w.grad.zero_() (--no-zero-grad)
    log_every: int = 1  # --fast: epochs between two copies of the loss log to the host


@dataclass
class FitResult:
    update: str
    losses: list[float] = field(default_factory=list)  # loss at each epoch, before its update
    data_losses: list[float] | None = None  # its data term mean((f − y)²), for losses with f′
    w: torch.Tensor | None = None  # w after the last epoch run
    diverged_at: int | None = None  # first epoch whose loss was not finite
    epochs_run: int = 0  # --fast reads losses per interval: after a divergence it may run past diverged_at + 1
    seconds: float = 0.0  # wall time of the whole fit
    setup_seconds: float = 0.0  # the first epoch; with --fast, the epochs that compile (and on CUDA the capture)
    setup_epochs: int = 0  # the epochs inside setup_seconds
    setup_what: str = ""  # what the setup did, for the report ("" for the plain loops)
    capture_seconds: float | None = None  # --fast on CUDA: torch.cuda.graph capture alone; None: no graph
    graph_error: str | None = None  # --fast on CUDA: why the capture failed and the epochs ran eagerly
    log_every: int = 1  # epochs between two copies of the loss log to the host (1: a .item() every epoch)

    @property
    def final_loss(self) -> float:
        return self.losses[-1]

    @property
    def epoch_ms(self) -> float | None:
        """Mean time of the epochs after the setup (the first epoch, which may compile or warm up)."""
        after = self.epochs_run - self.setup_epochs
        return None if after < 1 else (self.seconds - self.setup_seconds) / after * 1e3


def _train(label: str, w0: torch.Tensor, plan: FitPlan, step: Callable,
           parameters: Callable = lambda w: [w], keep_data: bool = False,
           world: DataParallel | None = None) -> FitResult:
    """The epoch loop every fit shares: step(w, optimizer) until plan.epochs or a non-finite loss;
    `optimizer` is torch.optim.SGD for plan.update 'sgd', else None.

    With `world` (torchrun), step sees this rank's rows only; a hook on w makes each backward's
    gradient the gradient over all n rows, and the loss recorded is the loss over all n rows.
    """
    w = w0.detach().clone().requires_grad_()
    if world is not None:
        world.average_gradient(w)  # w.grad of the mean over all n rows, on every rank (data_parallel.py)
    optimizer = torch.optim.SGD(parameters(w), lr=plan.lr) if plan.update == "sgd" else None
    result = FitResult(label, data_losses=[] if keep_data else None)
    start = time.perf_counter()
    for epoch in range(plan.epochs):
        value = step(w, optimizer)
        result.epochs_run = epoch + 1
        total, data = value if isinstance(value, tuple) else (value, value)
        if world is not None:  # this rank's loss is the mean over its own rows: make it the mean over all n
            total, data = world.mean_over_rows(total, data)
        if not math.isfinite(total):
            result.diverged_at = epoch
            break
        result.losses.append(total)
        if keep_data:
            result.data_losses.append(data)
        if epoch == 0:
            result.setup_seconds, result.setup_epochs = time.perf_counter() - start, 1
    result.seconds = time.perf_counter() - start
    result.w = w.detach()
    return result


def fit(phi: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, plan: FitPlan,
        world: DataParallel | None = None) -> FitResult:
    """Train w from a copy of w0 on the original loss with the plan's update (manual or SGD).

    With `world`, phi and y are this rank's rows and the steps are data-parallel (see _train).
    The same fit on the compiled loss is fast.fit_fast.
    """
    lr, zero_grad = plan.lr, plan.zero_grad

    def step(w, optimizer):
        return sgd_step(phi, y, w, optimizer, zero_grad) if optimizer else manual_step(phi, y, w, lr, zero_grad)

    return _train(plan.update, w0, plan, step, world=world)


def fit_loss(loss: Loss, features: Callable, x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor,
             plan: FitPlan) -> FitResult:
    """Train w on a loss with a derivative term (sobolev, smooth): derivative_step every epoch."""
    def step(w, optimizer):
        return derivative_step(loss, features, x, y, w, plan.lr, plan.zero_grad, optimizer)

    return _train(plan.update, w0, plan, step, keep_data=True)


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


def fit_mlp(x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, plan: FitPlan, seed: int,
            loss: Loss = Loss(), batchnorm: bool = False) -> tuple[FitResult, MLPFeatures]:
    """Train the extractor and the linear head together, end to end, with SGD whatever plan.update
    says (without zero_grad(), every parameter's .grad accumulates, as --no-zero-grad asks)."""
    torch.manual_seed(seed)
    extractor = MLPFeatures(w0.shape[0], batchnorm=batchnorm).to(x.device)

    def step(w, optimizer):
        if plan.zero_grad:
            optimizer.zero_grad()
        terms = loss_terms(loss, linear_model(extractor, w), x, y)  # f′ too, for sobolev and smooth
        terms.total.backward(inputs=optimizer.param_groups[0]["params"])  # into w and through Φ into the MLP
        optimizer.step()
        return terms.total.item(), terms.data.item()

    result = _train("mlp", w0, replace(plan, update="sgd"), step, parameters=lambda w: [w, *extractor.parameters()],
                    keep_data=loss.uses_derivative)
    return result, extractor

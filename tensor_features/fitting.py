"""The training loop: one epoch three ways (the original manual update, torch.optim.SGD, and a
loss with a derivative term), a fit of many epochs, the compiled --fast path, inference, and the
learned extractor. tensor_features/train.py runs these and prints the report.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from tensor_features.model import Loss, batched_derivative, linear_model, loss_terms, mse

if TYPE_CHECKING:  # the type only: a single-process run never imports the distributed plumbing
    from tensor_features.data_parallel import DataParallel


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
    optimizer.step()  # w.add_(w.grad, alpha=-lr) under no_grad (tests/test_fitting.py replays it bit for bit)
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
           parameters: Callable = lambda w: [w], keep_data: bool = False,
           world: DataParallel | None = None) -> FitResult:
    """The epoch loop every fit shares: step(w, optimizer) until epochs or a non-finite loss.

    With `world` (torchrun), step sees this rank's rows only; a hook on w makes each backward's
    gradient the gradient over all n rows, and the loss recorded is the loss over all n rows.
    """
    w = w0.detach().clone().requires_grad_()
    if world is not None:
        world.average_gradient(w)  # w.grad of the mean over all n rows, on every rank (data_parallel.py)
    optimizer = torch.optim.SGD(parameters(w), lr=lr) if update == "sgd" else None
    result = FitResult(label, data_losses=[] if keep_data else None)
    start = time.perf_counter()
    for epoch in range(epochs):
        value = step(w, optimizer)
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
            result.first_epoch_seconds = time.perf_counter() - start
    result.seconds = time.perf_counter() - start
    result.w = w.detach()
    return result


def fit(phi: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, lr: float, epochs: int,
        update: str = "manual", zero_grad: bool = True, fast: FastLoss | None = None,
        world: DataParallel | None = None) -> FitResult:
    """Train w from a copy of w0 on the original loss with the manual or the SGD update.

    With `fast` (see FastLoss), the same updates run on the compiled loss instead of the original.
    With `world`, phi and y are this rank's rows and the steps are data-parallel (see _train).
    """
    def step(w, optimizer):
        if fast is not None:
            return fast.sgd_step(w, optimizer, zero_grad) if optimizer else fast.manual_step(w, lr, zero_grad)
        return sgd_step(phi, y, w, optimizer, zero_grad) if optimizer else manual_step(phi, y, w, lr, zero_grad)

    compiling = fast is not None and fast.needs_compiling
    result = _train(update if fast is None else f"{update} --fast", w0, lr, epochs, update, step, world=world)
    result.compiled_in_first_epoch = compiling
    return result


def fit_loss(loss: Loss, features: Callable, x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, lr: float,
             epochs: int, update: str = "manual", zero_grad: bool = True) -> FitResult:
    """Train w on a loss with a derivative term (sobolev, smooth): derivative_step every epoch."""
    def step(w, optimizer):
        return derivative_step(loss, features, x, y, w, lr, zero_grad, optimizer)

    return _train(update, w0, lr, epochs, update, step, keep_data=True)


# -- the fast path (--fast): same loss, same autograd gradient, compiled (bench row 3 times it) ---

def rows_loss(w: torch.Tensor, phi_rows: torch.Tensor, y_flat: torch.Tensor) -> torch.Tensor:
    """The original loss mean((Φw - y)²), with Φ stored as d rows of n values.

    Φw is written as the sum of rows w_k Φ_k: elementwise work that torch.compile can fuse
    with the loss (bench row 3 measures the epoch against a memory floor). The original
    `phi @ w` with Φ as n rows of 3 is a skinny matrix product, a kernel of its own.
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

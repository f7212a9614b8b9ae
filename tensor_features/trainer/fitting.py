"""The training loop: one epoch three ways (the original manual update, torch.optim.SGD, and a
loss with a derivative term), a fit of many epochs, the compiled --fast path (its losses kept on
the device between log intervals; on CUDA one CUDA graph per epoch), inference, and the learned
extractor. tensor_features/train.py runs these and prints the report.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from tensor_features.trainer.model import Loss, batched_derivative, linear_model, loss_terms, mse

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


def fit(phi: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, lr: float, epochs: int,
        update: str = "manual", zero_grad: bool = True, fast: FastLoss | None = None,
        world: DataParallel | None = None, log_every: int = 1) -> FitResult:
    """Train w from a copy of w0 on the original loss with the manual or the SGD update.

    With `fast` (see FastLoss), the same updates run on the compiled loss instead of the original,
    and the losses stay on the device until every `log_every` epochs (see _train_fast).
    With `world`, phi and y are this rank's rows and the steps are data-parallel (see _train).
    """
    if fast is not None:
        return _train_fast(f"{update} --fast", fast, w0, lr, epochs, update, zero_grad, log_every, world)

    def step(w, optimizer):
        return sgd_step(phi, y, w, optimizer, zero_grad) if optimizer else manual_step(phi, y, w, lr, zero_grad)

    return _train(update, w0, lr, epochs, update, step, world=world)


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


def separate_compile_cache_per_cpu_capability() -> None:
    """Unless TORCHINDUCTOR_CACHE_DIR is set, keep torch.compile's cache in a folder per ATen CPU
    capability (<default>/AVX512, .../AVX2, ...). Seen on a 2-core Intel Xeon with torch 2.14.1: a run under
    ATEN_CPU_CAPABILITY=avx2 reused code compiled for 16-wide AVX-512 vectors by an earlier run,
    built it for 8-wide ones, and its loss came out 0.1749 instead of 0.2826."""
    import os

    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(default_cache_dir(),
                                                             torch.backends.cpu.get_cpu_capability())


class FastLoss:
    """The --fast path: rows_loss over Φ stored feature by feature, compiled with torch.compile.

    The update lines are the original's; only the loss changed form. The gradient still comes
    from autograd: AOTAutograd traces rows_loss's backward and the compiler emits code for both.
    The first epoch compiles (seconds); fit records how long it took. On CUDA (cuda_graph, the
    default there) FastFit also captures the whole epoch in one CUDA graph.
    """

    def __init__(self, phi: torch.Tensor, y: torch.Tensor, compile: bool = True, cuda_graph: bool | None = None):
        self.phi_rows = phi.detach().T.contiguous()  # no copy when Φ is already stored row by row
        self.y_flat = y.detach().reshape(-1)
        if compile:
            separate_compile_cache_per_cpu_capability()
        self.loss_fn = torch.compile(rows_loss, dynamic=False) if compile else rows_loss
        self.needs_compiling = compile  # until the first epoch has run
        self.cuda_graph = self.y_flat.is_cuda if cuda_graph is None else cuda_graph
        if self.cuda_graph and not self.y_flat.is_cuda:
            raise ValueError(f"a CUDA graph needs the data on a CUDA device, not {self.y_flat.device}")

    def manual_epoch(self, w: torch.Tensor, lr: float, zero_grad: bool = True) -> torch.Tensor:
        """One epoch of the original loop; the loss before the update, as a tensor (no .item(): no wait)."""
        loss = self.loss_fn(w, self.phi_rows, self.y_flat)
        loss.backward()
        with torch.no_grad():  # the original update, as in manual_step
            w -= lr * w.grad
            if zero_grad:
                w.grad.zero_()
        self.needs_compiling = False
        return loss.detach()

    def sgd_epoch(self, w: torch.Tensor, optimizer: torch.optim.Optimizer, zero_grad: bool = True) -> torch.Tensor:
        if zero_grad:
            optimizer.zero_grad()
        loss = self.loss_fn(w, self.phi_rows, self.y_flat)
        loss.backward()
        optimizer.step()
        self.needs_compiling = False
        return loss.detach()

    def manual_step(self, w: torch.Tensor, lr: float, zero_grad: bool = True) -> float:
        """manual_epoch, its loss read at once as manual_step reads it (bench row 3 times this on the CPU)."""
        return self.manual_epoch(w, lr, zero_grad).item()


class LossLog:
    """Each epoch's loss kept in a device tensor; the host copies it once per interval.

    record() is device work only: an index_copy_ at a position held in a device tensor, then
    position += 1. No .item(), so no wait for the device, and a CUDA graph can capture it (a
    captured index is fixed, hence the position tensor). read() is the interval's one copy to the
    host, and on CUDA its one synchronisation.
    """

    def __init__(self, size: int, device: torch.device, dtype: torch.dtype = torch.float32):
        self.values = torch.full((size,), math.nan, dtype=dtype, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)

    def record(self, loss: torch.Tensor) -> None:
        self.values.index_copy_(0, self.position, loss.reshape(1))
        self.position += 1

    def read(self, count: int) -> list[float]:
        """The `count` losses recorded since the last read, as Python floats; the next epoch writes slot 0."""
        losses = self.values[:count].tolist()
        self.position.zero_()
        return losses


WARMUP_EPOCHS = 3  # eager epochs before a capture, on a side stream: the CUDA notes' examples warm up 3 iterations


class FastFit:
    """The --fast epochs of one fit: w, its update, the loss log on the device, and on CUDA one graph.

    On CUDA the whole epoch, the compiled forward, autograd's backward, the original update lines
    and the log's write, is captured once with torch.cuda.graph and replayed: one launch per
    epoch. Why not torch.compile(mode="reduce-overhead"): it graphs what it compiles, the loss's
    forward and its compiled backward, each on its own; loss.backward() still goes through eager
    autograd's engine, which runs the compiled backward "as if it were one op" (PyTorch's
    torch.compiler FAQ, "Does torch.compile support training?"), and the update lines stay eager,
    kernel by kernel. The probe in issue 15 (H200, torch 2.11) measured reduce-overhead on the
    loss alone at 11× the memory floor at n = 2^22, and the eager epoch in one CUDA graph at 4.2×:
    it takes both the compiler's fused kernels and one graph per epoch, which torch.cuda.graph
    around the compiled loss gives. The recipe is the "CUDA Graphs" section of PyTorch's CUDA
    semantics notes (docs/source/notes/cuda.rst in pytorch/pytorch, "Whole-network capture"):
    warm up on a side stream, capture, replay; a replay reads and writes the memory the capture
    used, and w, w.grad, Φ, y and the log live on across replays. Not under torchrun: there a
    hook all-reduces every backward's gradient, and that path stays eager.
    """

    def __init__(self, fast: FastLoss, w0: torch.Tensor, lr: float, update: str = "manual",
                 zero_grad: bool = True, log_every: int = 1, world: DataParallel | None = None):
        self.fast, self.lr, self.zero_grad, self.world = fast, lr, zero_grad, world
        self.w = w0.detach().clone().requires_grad_()
        if world is not None:
            world.average_gradient(self.w)  # as in _train
        self.optimizer = torch.optim.SGD([self.w], lr=lr) if update == "sgd" else None
        self.uses_graph = fast.cuda_graph and world is None
        self.compiles = fast.needs_compiling  # this fit's first epoch compiles (a second fit reuses the code)
        self.setup_epochs = WARMUP_EPOCHS if self.uses_graph else 1
        self.log = LossLog(max(log_every, self.setup_epochs), self.w.device, fast.y_flat.dtype)
        self.unread = 0  # epochs recorded since the last read (host-side count: a capture records nothing)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.capture_seconds: float | None = None
        self.graph_error: str | None = None

    def epoch(self) -> None:
        """One epoch, run eagerly (the compiled loss is one call); its loss goes to the log on the device."""
        if self.optimizer is not None:
            loss = self.fast.sgd_epoch(self.w, self.optimizer, self.zero_grad)
        else:
            loss = self.fast.manual_epoch(self.w, self.lr, self.zero_grad)
        self.log.record(loss)

    def setup(self, epochs: int) -> int:
        """The first epochs, which compile: on CUDA WARMUP_EPOCHS of them on a side stream (the docs
        require the warm-up there), else one. Returns how many ran (at most `epochs`)."""
        count = min(epochs, self.setup_epochs)
        self.unread += count
        if not self.uses_graph:
            for _ in range(count):
                self.epoch()
            return count
        side = torch.cuda.Stream(self.w.device)
        side.wait_stream(torch.cuda.current_stream(self.w.device))
        with torch.cuda.stream(side):
            for _ in range(count):
                self.epoch()
        torch.cuda.current_stream(self.w.device).wait_stream(side)
        return count

    def capture(self) -> None:
        """Capture one epoch in a CUDA graph (CUDA only): nothing runs now, every replay runs it.

        With the manual update (and with SGD without zero_grad) w.grad already exists, the warm-up
        made it: backward without create_graph adds into it in place (Case 2.3 in
        torch/csrc/autograd/functions/accumulate_grad.h), so the capture records that addition as
        every eager epoch after the first runs it, and without zero_() the sum carries over as it
        does eagerly. SGD's zero_grad() sets w.grad to None, so there the captured backward makes
        w.grad in the graph's memory, as in the notes' whole-network example. A capture that fails
        leaves the epochs eager, and the report says why.
        """
        if not self.uses_graph:
            return
        start = time.perf_counter()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.epoch()
        except RuntimeError as error:
            self.graph_error = " ".join(str(error).split())[:300]
            torch.cuda.synchronize(self.w.device)
            return
        self.graph = graph
        self.capture_seconds = time.perf_counter() - start

    def run(self, count: int) -> None:
        """`count` epochs: graph replays once captured, else eager epochs. Nothing waits for the device."""
        if self.unread + count > len(self.log.values):  # past the end, index_copy_ would fail (on CUDA, an assert)
            raise ValueError(f"the loss log holds {len(self.log.values)} epochs; read it before running more")
        self.unread += count
        for _ in range(count):
            if self.graph is not None:
                self.graph.replay()
            else:
                self.epoch()

    def read(self, count: int) -> list[float]:
        """The last `count` epochs' losses on the host (under torchrun: over all n rows, one all-reduce)."""
        losses = self.log.read(count)
        self.unread = 0
        if self.world is not None:
            losses = list(self.world.mean_over_rows(*losses))
        return losses


def _keep_finite(result: FitResult, losses: list[float], first_epoch: int) -> bool:
    """Append the losses up to the first that is not finite; False (and diverged_at set) at that one."""
    for epoch, loss in enumerate(losses, start=first_epoch):
        if not math.isfinite(loss):
            result.diverged_at = epoch
            return False
        result.losses.append(loss)
    return True


def _train_fast(label: str, fast: FastLoss, w0: torch.Tensor, lr: float, epochs: int, update: str,
                zero_grad: bool, log_every: int, world: DataParallel | None) -> FitResult:
    """The --fast loop: losses read to the host once per `log_every` epochs, not once per epoch.

    A non-finite loss is therefore seen when its interval is read: the epochs after it in that
    interval have run too (epochs_run says how many ran, w is the w after the last of them), and
    diverged_at is still the first epoch whose loss was not finite.
    """
    log_every = min(log_every, epochs)  # the log holds one interval: never longer than the fit
    runner = FastFit(fast, w0, lr, update, zero_grad, log_every, world)
    result = FitResult(label, log_every=log_every)
    start = time.perf_counter()
    done = runner.setup(epochs)
    going = _keep_finite(result, runner.read(done), 0)
    if going and done < epochs:
        runner.capture()
    result.setup_seconds, result.setup_epochs = time.perf_counter() - start, done
    while going and done < epochs:
        count = min(log_every, epochs - done)
        runner.run(count)
        going = _keep_finite(result, runner.read(count), done)
        done += count
    result.seconds = time.perf_counter() - start
    result.epochs_run = done
    result.w = runner.w.detach()
    result.capture_seconds, result.graph_error = runner.capture_seconds, runner.graph_error
    result.setup_what = setup_text(runner, done=result.setup_epochs)
    return result


def setup_text(runner: FastFit, done: int) -> str:
    """What the setup of a --fast fit did, for the report."""
    epochs = f"{done} epoch{'s' if done != 1 else ''}"
    where = " on a side stream" if runner.uses_graph else ""
    compiling = ", torch.compile compiling in the first" if runner.compiles else ""
    text = f"{epochs}{where}{compiling}"
    if runner.capture_seconds is not None:
        text += f"; CUDA graph capture {runner.capture_seconds:.3f} s"
    if runner.graph_error is not None:
        text += f"; the CUDA graph capture failed, so every epoch ran eagerly: {runner.graph_error}"
    return text


def payoff_epochs(setup_seconds: float, setup_epochs: int, fast_ms: float, default_ms: float) -> int | None:
    """The fewest epochs from which a --fast fit takes no longer than the original loop, or None (never).

    --fast takes setup_seconds for its first setup_epochs epochs, then fast_ms per epoch; the
    original loop default_ms per epoch. E epochs cost S + (E − k)·f against E·d, so E ≥ (S − k·f)/(d − f).
    """
    if fast_ms >= default_ms:
        return None
    return max(setup_epochs, math.ceil((setup_seconds * 1e3 - setup_epochs * fast_ms) / (default_ms - fast_ms)))


REFERENCE_EPOCHS = 5  # timed epochs of the original loop, for --fast's pay-off


def reference_epoch_ms(phi: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, lr: float,
                       epochs: int = REFERENCE_EPOCHS) -> float:
    """Mean wall time of the original loop's epoch (manual_step, its .item() included) on a copy of w0,
    over `epochs` epochs after one untimed: the figure --fast's pay-off is measured against."""
    w = w0.detach().clone().requires_grad_()
    manual_step(phi, y, w, lr)
    start = time.perf_counter()
    for _ in range(epochs):
        manual_step(phi, y, w, lr)
    return (time.perf_counter() - start) / epochs * 1e3


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
            loss: Loss = Loss(), batchnorm: bool = False, zero_grad: bool = True) -> tuple[FitResult, MLPFeatures]:
    """Train the extractor and the linear head together, end to end, with SGD (without
    zero_grad(), every parameter's .grad accumulates across epochs, as --no-zero-grad asks)."""
    torch.manual_seed(seed)
    extractor = MLPFeatures(w0.shape[0], batchnorm=batchnorm).to(x.device)

    def step(w, optimizer):
        if zero_grad:
            optimizer.zero_grad()
        terms = loss_terms(loss, linear_model(extractor, w), x, y)  # f′ too, for sobolev and smooth
        terms.total.backward(inputs=optimizer.param_groups[0]["params"])  # into w and through Φ into the MLP
        optimizer.step()
        return terms.total.item(), terms.data.item()

    result = _train("mlp", w0, lr, epochs, "sgd", step, parameters=lambda w: [w, *extractor.parameters()],
                    keep_data=loss.uses_derivative)
    return result, extractor

"""The --fast path: the same loss and the same autograd gradient, the loss compiled with
torch.compile over Φ stored feature by feature, its losses kept on the device between log
intervals, and on CUDA one CUDA graph per epoch. Bench row 3 times it against the original loop.

fit_fast is fitting.fit on this path; payoff_epochs and reference_epoch_ms say when it pays.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from tensor_features.trainer.fitting import FitPlan, FitResult, manual_step
from tensor_features.trainer.model import mse

if TYPE_CHECKING:  # the type only: a single-process run never imports the distributed plumbing
    from tensor_features.trainer.data_parallel import DataParallel


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

    def __init__(self, fast: FastLoss, w0: torch.Tensor, plan: FitPlan, world: DataParallel | None = None):
        self.fast, self.lr, self.zero_grad, self.world = fast, plan.lr, plan.zero_grad, world
        self.w = w0.detach().clone().requires_grad_()
        if world is not None:
            world.average_gradient(self.w)  # as in _train
        self.optimizer = torch.optim.SGD([self.w], lr=plan.lr) if plan.update == "sgd" else None
        self.uses_graph = fast.cuda_graph and world is None
        self.compiles = fast.needs_compiling  # this fit's first epoch compiles (a second fit reuses the code)
        self.setup_epochs = WARMUP_EPOCHS if self.uses_graph else 1
        self.log = LossLog(max(plan.log_every, self.setup_epochs), self.w.device, fast.y_flat.dtype)
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


def fit_fast(fast: FastLoss, w0: torch.Tensor, plan: FitPlan, world: DataParallel | None = None) -> FitResult:
    """fitting.fit with the loss compiled: the plan's update lines on FastLoss, the losses read to
    the host once per plan.log_every epochs, not once per epoch.

    A non-finite loss is therefore seen when its interval is read: the epochs after it in that
    interval have run too (epochs_run says how many ran, w is the w after the last of them), and
    diverged_at is still the first epoch whose loss was not finite.
    """
    epochs = plan.epochs
    log_every = min(plan.log_every, epochs)  # the log holds one interval: never longer than the fit
    runner = FastFit(fast, w0, replace(plan, log_every=log_every), world)
    result = FitResult(f"{plan.update} --fast", log_every=log_every)
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

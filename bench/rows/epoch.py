"""Row 3: one training epoch at n = --n (default 2**22), degree 3, vs a memory-bandwidth floor: reading Φ twice
and y once with plain sums, what an epoch that reads Φ once forward and once backward must at least move.

(A floor for that shape of epoch, not for every epoch: one fused pass that forms each residual and
accumulates Φᵀr at once would read Φ once.) On the CPU the floor and the three epochs are timed in
turns, one call of each per round, and each figure is the median of its rounds.

On CUDA each figure is a median of GPU time from CUDA events (torch.cuda.Event(enable_timing=True))
around EVENT_CALLS calls in a row, the floor's included, and 3c is the --fast epoch as the trainer
runs it there: one CUDA graph replay per epoch, the losses read to the host once per EVENT_CALLS
epochs (tensor_features/trainer/fast.py, FastFit).
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from bench.table import Figure, Row
from tensor_features.trainer import fast as fast_path
from tensor_features.trainer import fitting, model
from tensor_features.load_data import load_data
from tensor_features.utils import median_seconds, synchronize

NUMBER = 3
EVENT_CALLS = 10  # calls between two CUDA events; on CUDA also the --fast loss log's interval


def cuda_event_ms(fn, repeats: int, calls: int = EVENT_CALLS) -> float:
    """Median GPU milliseconds per call of fn(), by CUDA events around `calls` calls, after one warm-up call.

    The recipe of PyTorch's CUDA semantics notes ("Asynchronous execution"): record, run, record,
    synchronize, elapsed_time.
    """
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def payoff_note(setup_seconds: float, setup_epochs: int, fast_ms: float, default_ms: float) -> str:
    epochs = fast_path.payoff_epochs(setup_seconds, setup_epochs, fast_ms, default_ms)
    return "never pays off (3c ≥ 3a)" if epochs is None else f"pays off from {epochs} epochs on (3d vs 3a − 3c)"


def in_turns_ms(fns: dict, repeats: int) -> dict:
    """Median wall milliseconds of each fn, timed in turns (one call of each per round, after one
    warm-up call each), so that a load that comes and goes on a shared machine falls on all alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def epoch(device: torch.device, n: int, repeats: int, degree: int = 3) -> list[Row]:
    x, y = load_data(n, device=device)
    phi = model.make_features(x, degree)

    def read_floor():
        # Φ read twice (forward and backward each need it) and y once, by the plainest kernel there is.
        return phi.sum(), phi.sum(), y.sum()

    def timed_ms(fn) -> float:
        if device.type == "cuda":
            return cuda_event_ms(fn, repeats)
        return median_seconds(fn, repeats=repeats, device=device) * 1e3

    w0 = model.initial_weights(degree, 0, device)

    def epoch_ms(step) -> float:
        w = w0.clone().requires_grad_()
        return timed_ms(lambda: step(w))

    rows_phi = fast_path.rows_layout(phi)
    eager = fast_path.FastLoss(rows_phi, y, compile=False, cuda_graph=False)
    fast = fast_path.FastLoss(rows_phi, y)
    if device.type == "cuda":
        floor = timed_ms(read_floor)
        original_loop = epoch_ms(lambda w: fitting.manual_step(phi, y, w, 0.1))
        eager_rows = epoch_ms(lambda w: eager.manual_step(w, 0.1))
        # 3c, the trainer's path: warm-up and compile, capture, then graph replays
        runner = fast_path.FastFit(fast, w0, fitting.FitPlan(0.1, EVENT_CALLS, log_every=EVENT_CALLS))
        start = time.perf_counter()
        setup_epochs = runner.setup(runner.setup_epochs)
        runner.read(setup_epochs)
        runner.capture()
        synchronize(device)
        compile_seconds = time.perf_counter() - start

        def interval():  # EVENT_CALLS epochs, then the one read of their losses
            runner.run(EVENT_CALLS)
            runner.read(EVENT_CALLS)

        compiled = cuda_event_ms(interval, repeats, calls=1) / EVENT_CALLS
        how = (f"setup: {setup_epochs} warm-up epochs, compile and graph capture ({runner.capture_seconds:.3f} s)"
               if runner.graph is not None else f"CUDA graph capture failed: {runner.graph_error}")
    else:
        w = w0.clone().requires_grad_()
        start = time.perf_counter()
        fast.manual_step(w, 0.1)  # compiles forward and backward
        synchronize(device)
        compile_seconds, setup_epochs = time.perf_counter() - start, 1
        ws = {name: w0.clone().requires_grad_() for name in ("original", "eager", "fast")}
        ms = in_turns_ms({
            "floor": read_floor,
            "original": lambda: fitting.manual_step(phi, y, ws["original"], 0.1),
            "eager": lambda: eager.manual_step(ws["eager"], 0.1),
            "fast": lambda: fast.manual_step(ws["fast"], 0.1),
        }, repeats)
        floor, original_loop, eager_rows, compiled = ms["floor"], ms["original"], ms["eager"], ms["fast"]
        how = "once per process; inductor caches on disk"

    what = f"epoch n=2^{int(math.log2(n))}" if n & (n - 1) == 0 else f"epoch n={n}"
    return [
        Row("3a", f"{what}, default (the original loop)", "report", Figure(original_loop, floor, "ms")),
        Row("3b", f"{what}, Φ as d×n rows, eager", "report", Figure(eager_rows, floor, "ms")),
        Row("3c", f"{what}, --fast (d×n + torch.compile; on CUDA one graph per epoch)", "≤ 3 CPU, ≤ 2 CUDA",
            Figure(compiled, floor, "ms", met=compiled <= (2 if device.type == "cuda" else 3) * floor)),
        Row("3d", "--fast: setup (first epoch compiling; on CUDA warm-up and capture too)", "report",
            Figure(compile_seconds, None, "s",
                   note=f"{how}; {payoff_note(compile_seconds, setup_epochs, compiled, original_loop)}")),
    ]


def measure(device: torch.device, args) -> list[Row]:
    return epoch(device, args.n, args.repeats)

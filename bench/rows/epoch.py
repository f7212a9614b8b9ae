"""Row 3: one training epoch at n = 2**22, degree 3, vs a memory-bandwidth floor: reading Φ twice
and y once with plain sums, the least any epoch that reads its data forward and backward can cost."""

from __future__ import annotations

import math
import time

import torch

from bench.table import Figure, Row
from tensor_features import fitting, model
from tensor_features.load_data import load_data
from tensor_features.utils import median_seconds, synchronize

NUMBER = 3


def epoch(device: torch.device, n: int, repeats: int, degree: int = 3) -> list[Row]:
    x, y = load_data(n, device=device)
    phi = model.make_features(x, degree)

    def read_floor():
        # Φ read twice (forward and backward each need it) and y once, by the plainest kernel there is.
        return phi.sum(), phi.sum(), y.sum()

    floor = median_seconds(read_floor, repeats=repeats, device=device) * 1e3
    w0 = model.initial_weights(degree, 0, device)

    def epoch_ms(step) -> float:
        w = w0.clone().requires_grad_()
        return median_seconds(lambda: step(w), repeats=repeats, device=device) * 1e3

    original_loop = epoch_ms(lambda w: fitting.manual_step(phi, y, w, 0.1))
    rows_phi = fitting.rows_layout(phi)
    eager = fitting.FastLoss(rows_phi, y, compile=False)
    eager_rows = epoch_ms(lambda w: eager.manual_step(w, 0.1))
    fast = fitting.FastLoss(rows_phi, y)
    w = w0.clone().requires_grad_()
    start = time.perf_counter()
    fast.manual_step(w, 0.1)  # compiles forward and backward
    synchronize(device)
    compile_seconds = time.perf_counter() - start
    compiled = epoch_ms(lambda w: fast.manual_step(w, 0.1))

    what = f"epoch n=2^{int(math.log2(n))}" if n & (n - 1) == 0 else f"epoch n={n}"
    return [
        Row("3a", f"{what}, default (the original loop)", "report", Figure(original_loop, floor, "ms")),
        Row("3b", f"{what}, Φ as d×n rows, eager", "report", Figure(eager_rows, floor, "ms")),
        Row("3c", f"{what}, --fast (d×n + torch.compile)", "≤ 3",
            Figure(compiled, floor, "ms", met=compiled <= 3 * floor)),
        Row("3d", "--fast: first epoch, compiling included", "report",
            Figure(compile_seconds, None, "s", note="once per process; inductor caches on disk")),
    ]


def measure(device: torch.device, args) -> list[Row]:
    return epoch(device, args.n, args.repeats)

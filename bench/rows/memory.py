"""Row 5: peak resident memory of a training run at n = --n (default 2**22) above an idle `import torch`, vs
the bytes of x, y and Φ."""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

import torch

from bench.measure import MB, feature_bytes, peak_rss_mb
from bench.table import Figure, Row
from tensor_features import train
from tensor_features.config import TrainConfig

NUMBER = 5


def memory(device: torch.device, n: int, epochs: int = 20, rounds: int = 3) -> list[Row]:
    budget = feature_bytes(n, 3) / MB
    variants = {"default": [], "--fast": ["--fast"]}
    if device.type == "cuda":  # the data live on the GPU: count what the caching allocator handed out
        rows = []
        for name, extra in variants.items():
            config = replace(TrainConfig(), n=n, epochs=epochs, update="manual", fast=bool(extra))
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            train.run(config, device)  # computes only; report() would print
            peak = torch.cuda.max_memory_allocated() / MB
            rows.append(Figure(peak, budget, "MB", met=peak <= 4 * budget, note="peak CUDA memory allocated"))
        return [Row("5a", "", "≤ 4", rows[0]), Row("5b", "", "≤ 4", rows[1])]

    idle = statistics.median(peak_rss_mb(["-c", "import torch"])[0] for _ in range(rounds))
    rows = []
    for key, (name, extra) in zip("ab", variants.items()):
        def command(size: int) -> list[str]:
            return ["-m", "tensor_features.train", "--n", str(size), "--epochs", str(epochs),
                    "--update", "manual", "--device", "cpu", *extra]

        runs = [peak_rss_mb(command(n)) for _ in range(rounds)]
        fixed = peak_rss_mb(command(16))[0] - idle  # what the run costs with (almost) no data
        figure = Figure(statistics.median(peak for peak, _ in runs) - idle, budget, "MB",
                        note=f"idle import torch {idle:.0f} MiB; the same run at n=16 {fixed:+.0f} MiB")
        codes = [code for _, code in runs if code != 0]
        figure.met = not codes and figure.ratio <= 4
        if codes:
            figure.note = f"exit code {codes[0]}"
        size = f"2^{int(math.log2(n))}" if n & (n - 1) == 0 else str(n)
        rows.append(Row(f"5{key}", f"peak memory, n={size}, {name} path", "≤ 4", figure))
    return rows


def measure(device: torch.device, args) -> list[Row]:
    return memory(device, args.n)

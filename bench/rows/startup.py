"""Row 1: each lesson's whole run, start to exit, vs a bare `python -c "import torch"`, alternating runs.

A lesson's own work (its timing loops, lesson 09's two worker processes) is inside the figure, so
the ratio says how much a lesson adds to torch's import; it has no goal of its own."""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from bench.measure import process_run
from bench.table import Figure, Row
from tensor_features.lab.lessons import lesson_paths, short_name

NUMBER = 1


def startup(device: torch.device, lessons: list[Path], rounds: int) -> list[Row]:
    if device.type == "cuda":  # any CUDA program pays for the context: put it in the reference too
        bare = ["-c", "import torch; torch.zeros(1, device='cuda')"]
    else:
        bare = ["-c", "import torch"]
    bare_times, lesson_times, failures = [], {p.name: [] for p in lessons}, {}
    for _ in range(rounds):
        for lesson in lessons:  # alternate, so that a slow spell of the machine hits both
            bare_times.append(process_run(bare)[0])
            seconds, code = process_run([lesson.name, "--device", device.type])
            lesson_times[lesson.name].append(seconds)
            if code != 0:
                failures[lesson.name] = code
    reference = statistics.median(bare_times)
    rows = []
    for lesson in lessons:
        figure = Figure(statistics.median(lesson_times[lesson.name]), reference, "s")
        if lesson.name in failures:  # a lesson that fails is broken, not slow
            figure.met = False
            figure.note = f"exit code {failures[lesson.name]}"
        rows.append(Row(f"1{chr(ord('a') + len(rows))}", f"whole run: lesson {short_name(lesson.name)}", "report",
                        figure))
    return rows


def measure(device: torch.device, args) -> list[Row]:
    return startup(device, lesson_paths(), args.rounds)

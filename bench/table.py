"""The bench's table: a Figure per device and row, rendered as text, Markdown or JSON."""

from __future__ import annotations

import contextlib
import math
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

@dataclass
class Figure:
    """One device's measurement for a row, and the reference measured beside it."""
    value: float | None
    reference: float | None
    unit: str  # "s", "ms", "epochs", "MB"
    met: bool | None = None  # None: this row has no goal of its own
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.reference:
            return None
        return self.value / self.reference


@dataclass
class Row:
    key: str
    what: str
    goal: str
    cpu: Figure | None = None
    cuda: Figure | None = None


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "gpu": gpu}


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if value == math.inf:
        return "∞"
    if unit == "epochs":
        return f"{value:.0f}"
    if unit in ("MB", "MiB"):
        return f"{value:.0f} MiB"
    if unit == "×":
        return f"{value:.1f}×"
    return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"


def cells(figure: Figure | None, no_figure: str) -> list[str]:
    if figure is None:
        return [no_figure, "", "", ""]
    ratio = "—" if figure.ratio is None else f"{figure.ratio:.3g}"
    met = {True: "ok", False: "MISS", None: ""}[figure.met]
    return [fmt(figure.value, figure.unit), fmt(figure.reference, figure.unit), ratio, met]


HEADER = ["#", "what", "goal", "CPU", "reference", "ratio", "met", "CUDA", "reference", "ratio", "met", "note"]


def table_rows(rows: list[Row], gpu: str) -> list[list[str]]:
    lines = []
    for row in rows:
        note = "; ".join(f.note for f in (row.cpu, row.cuda) if f is not None and f.note)
        lines.append([row.key, row.what, row.goal, *cells(row.cpu, "—"), *cells(row.cuda, gpu), note])
    return lines


def render_text(rows: list[Row], info: dict) -> str:
    gpu = "no GPU" if info["gpu"] == "no GPU" else "—"
    body = [HEADER, *table_rows(rows, gpu)]
    widths = [max(len(line[i]) for line in body) for i in range(len(HEADER))]
    out = [f"machine: {info['cpu']} · {info['cores']} cores, torch threads {info['torch_threads']} · "
           f"Python {info['python']} · torch {info['torch']} · GPU: {info['gpu']}",
           "ratio = value / reference (each row's note says how its figures were taken); a goal applies to the ratio"]
    for line in body:
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    return "\n".join(out)


def render_markdown(rows: list[Row], info: dict) -> str:
    gpu = "no GPU" if info["gpu"] == "no GPU" else "—"
    out = [f"machine: {info['cpu']}, {info['cores']} cores (torch threads {info['torch_threads']}), "
           f"Python {info['python']}, torch {info['torch']}, GPU: {info['gpu']}", "",
           "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for line in table_rows(rows, gpu):
        out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |")
    return "\n".join(out)


def as_json(rows: list[Row], info: dict) -> dict:
    def figure(f: Figure | None):
        return None if f is None else {**asdict(f), "ratio": f.ratio}

    return {"machine": info, "rows": [{"key": r.key, "what": r.what, "goal": r.goal,
                                       "cpu": figure(r.cpu), "cuda": figure(r.cuda)} for r in rows]}

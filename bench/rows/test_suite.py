"""Row 6: the test suite's wall time (pytest, what `make test` runs after the install)."""

from __future__ import annotations

import torch

from bench.measure import process_run
from bench.table import Figure, Row

NUMBER = 6


def test_suite() -> list[Row]:
    seconds, code = process_run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadfile"])
    figure = Figure(seconds, 180.0, "s", met=code == 0 and seconds < 180, note="reference: the 3-minute goal")
    if code != 0:
        figure.note = f"pytest exit code {code}"
    return [Row("6", "test suite (pytest, as make test runs it)", "< 1", figure)]


def measure(device: torch.device, args) -> list[Row]:
    return test_suite() if device.type == "cpu" else []

"""Row 6: the test suite's wall time (pytest, what `make test` runs after the install).

A failing suite is a broken row, not a slow one: its note names the failing tests (from pytest's
summary), so that `make bench` says why; their output is `make test`'s to show."""

from __future__ import annotations

import re

import torch

from bench.measure import process_run_output
from bench.table import Figure, Row

NUMBER = 6
GOAL_S = 180.0
SHOWN = 3  # failing tests named in the note; the rest are counted


def failure_note(code: int, output: str) -> str:
    """'pytest exit code N' and, where pytest's summary lists them, the first failing tests."""
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.M)
    note = f"pytest exit code {code}"
    if failed:
        named = ", ".join(failed[:SHOWN]) + (f" and {len(failed) - SHOWN} more" if len(failed) > SHOWN else "")
        note += f": {named}"
    return note


def test_suite() -> list[Row]:
    # pytest.ini's -ra makes pytest's summary list each failure and error on a line of its own.
    seconds, code, output = process_run_output(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
                                                "--dist", "loadfile", "-m", "not processes"])
    figure = Figure(seconds, GOAL_S, "s", met=code == 0 and seconds < GOAL_S, note="reference: the 3-minute goal")
    if code != 0:
        figure.note = failure_note(code, output)
    return [Row("6", "test suite (pytest, as make test runs it)", "< 1", figure)]


def measure(device: torch.device, args) -> list[Row]:
    return test_suite() if device.type == "cpu" else []

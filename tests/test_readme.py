"""The README quotes real output ("실제 출력") three times. Each quoted line, apart from the `...`
that marks a cut, must be a line that the program prints today, so that the README cannot drift
from the lab. The programs run in process, on the CPU, as the README says."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import ROOT, run_in_process
from tensor_features import train

MUTANTS = [
    ("README.md", "  ok  x.grad = 8.0 ", "  ok  x.grad = 8   "),
    ("README.md", "over 100 epochs: 2.24e-08", "over 100 epochs: 2.2e-08"),
    ("README.md", "w.grad of the data term alone [0.4756", "w.grad of the data term alone [0.4765"),
]

README = (ROOT / "README.md").read_text(encoding="utf-8")


def quoted_blocks() -> list[list[str]]:
    """The code blocks that follow a paragraph ending in "실제 출력 …:", as lists of lines."""
    blocks = re.findall(r"실제 출력[^\n]*:\n+```\n(.*?)```", README, flags=re.S)
    return [[line.rstrip() for line in block.splitlines() if line.strip() and line.strip() != "..."]
            for block in blocks]


def test_the_readme_quotes_three_outputs():
    assert len(quoted_blocks()) == 3


def assert_quoted(lines: list[str], printed: str) -> None:
    printed_lines = {line.rstrip() for line in printed.splitlines()}
    missing = [line for line in lines if line not in printed_lines]
    assert not missing, "README lines the program no longer prints:\n" + "\n".join(missing)


def test_the_lesson_excerpt_is_what_05_backward_prints():
    lines = quoted_blocks()[0]
    if f"torch {torch.__version__} " not in lines[0]:
        lines = lines[1:]  # the header names the installed torch; another build prints another
    finished = run_in_process(ROOT / "05_gradient_computation_backward.py", ["--device", "cpu"])
    assert finished.code == 0
    assert_quoted(lines, finished.stdout)


@pytest.mark.parametrize("block, argv", [(1, []), (2, ["--loss", "sobolev"])], ids=["mse", "sobolev"])
def test_the_trainer_excerpts_are_what_the_trainer_prints(block, argv, capsys):
    assert train.main([*argv, "--device", "cpu"]) == 0
    assert_quoted(quoted_blocks()[block], capsys.readouterr().out)

"""The README comes in two languages, README.md (English) and README.ko.md (Korean), and each quotes
real output ("Real output" / "실제 출력") three times. Each quoted line, apart from the `...` that
marks a cut, must be a line that the program prints today, so that neither README can drift from the
lab. The programs run in process, on the CPU, as the READMEs say.

A test is a claim about every machine, so the quotes are checked only for what every machine prints:
a figure at float32 rounding level (the manual-vs-SGD gaps, a loss a few ulps above its optimum)
depends on the CPU's arithmetic (2.24e-08 on one CPU, 0 on another), and matches any figure that is
itself at rounding level. Everything else on the line must be printed as quoted.

The two READMEs are twins: the same headings, tables, links and fenced code blocks (code, commands
and program output are not translated)."""

from __future__ import annotations

import re

import pytest
import torch

from tests.support import ROOT, run_in_process
from tensor_features import train

MUTANTS = [
    # the quoted output of 05 backward and of the trainer, in each language
    ("README.md", "  ok  x.grad = 8.0 ", "  ok  x.grad = 8   "),
    ("README.md", "14/14 checks match across 6 observations.", "14/14 checks match across 7 observations."),
    ("README.ko.md", "w.grad of the data term alone [0.4756", "w.grad of the data term alone [0.4765"),
    ("README.ko.md", "not within 1% of it in 100 epochs\n  largest", "not within 1% of it in 10 epochs\n  largest"),
    # a rounding-level figure may be any rounding-level figure, but not a large one
    ("README.md", "over 100 epochs: 2.24e-08", "over 100 epochs: 2.24e-02"),
    ("README.ko.md", "), 5.4e-09 above the optimum, within 1%", "), 5.4e-03 above the optimum, within 1%"),
    # the words around a rounding-level figure are still checked, and so is the figure the trainer prints
    ("tensor_features/trainer/report.py", "max |w_manual - w_sgd| after the last update", "max |w_manual - w_sgd| at the end"),
    ("tensor_features/trainer/report.py", "w_gap = (manual.w - sgd.w).abs().max().item()",
     "w_gap = (manual.w - sgd.w).abs().max().item() + 1"),
    # each README's marker introduces its quotes
    ("README.md", "Real output (CPU, the start of 05 backward):", "Output (CPU, the start of 05 backward):"),
    ("README.ko.md", "실제 출력(CPU, 05 backward의 앞부분):", "출력(CPU, 05 backward의 앞부분):"),
    # the twins: headings, tables, code blocks, links, and the link to each other
    ("README.ko.md", "### 관찰 포인트 스위치", "**관찰 포인트 스위치**"),
    ("README.md", "| `make clean` | Removes the virtual environment and the caches. |\n", ""),
    ("README.ko.md", "# c10d rendezvous: the same command on every node", "# c10d rendezvous: 모든 노드에서 같은 명령"),
    ("README.ko.md", "[docs/performance.md](docs/performance.md)의 10행", "docs/performance.md의 10행"),
    ("README.md", "**English** · [한국어](README.ko.md)", "**English** · 한국어"),
]

READMES = {"README.md": "Real output", "README.ko.md": "실제 출력"}  # each file and its marker for quotes


def readme(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def quoted_blocks(name: str) -> list[list[str]]:
    """The code blocks that follow a paragraph ending in "<marker> …:", as lists of lines."""
    blocks = re.findall(re.escape(READMES[name]) + r"[^\n]*:\n+```\n(.*?)```", readme(name), flags=re.S)
    return [[line.rstrip() for line in block.splitlines() if line.strip() and line.strip() != "..."]
            for block in blocks]


# A figure written as d.ddde-07 or smaller is at float32 rounding level for this trainer (its losses
# are about 0.01, its weights about 1; float32's eps is 1.2e-7). Which such figure is printed depends
# on how the CPU rounds (on one CPU the manual and SGD runs differ by 2.24e-08, on another they are
# bit-identical and print 0), so in a quote it stands for any figure at rounding level: at most
# ROUNDING, the tolerance tests/trainer/test_train_data_parallel.py allows for float32 rounding too.
ROUNDING_FIGURE = re.compile(r"\d(?:\.\d+)?e-(?:0[7-9]|[1-9]\d)")
ANY_FIGURE = r"(\d+(?:\.\d*)?(?:e[-+]?\d+)?)"
ROUNDING = 1e-6


def line_pattern(quoted: str) -> re.Pattern:
    """The quoted line as a pattern: verbatim, except each rounding-level figure matches any figure."""
    literal = ROUNDING_FIGURE.split(quoted)
    return re.compile(ANY_FIGURE.join(re.escape(part) for part in literal))


def printed_as_quoted(quoted: str, printed_lines: list[str]) -> bool:
    pattern = line_pattern(quoted)
    for line in printed_lines:
        match = pattern.fullmatch(line)
        if match and all(float(figure) <= ROUNDING for figure in match.groups()):
            return True
    return False


def assert_quoted(lines: list[str], printed: str) -> None:
    printed_lines = [line.rstrip() for line in printed.splitlines()]
    missing = [line for line in lines if not printed_as_quoted(line, printed_lines)]
    assert not missing, "README lines the program no longer prints:\n" + "\n".join(missing)


def test_a_rounding_level_figure_matches_any_rounding_level_figure_and_nothing_else():
    quoted = "  largest |loss_manual - loss_sgd| over 100 epochs: 2.24e-08;  max |w_manual - w_sgd|: 1.49e-08"
    assert printed_as_quoted(quoted, [quoted])
    assert printed_as_quoted(quoted, ["  largest |loss_manual - loss_sgd| over 100 epochs: 0;  max |w_manual - w_sgd|: 0"])
    assert not printed_as_quoted(quoted, ["  largest |loss_manual - loss_sgd| over 100 epochs: 0.5;  max |w_manual - w_sgd|: 0"])
    assert not printed_as_quoted(quoted, ["  largest |loss_manual - loss_sgd| over 10 epochs: 0;  max |w_manual - w_sgd|: 0"])
    assert not printed_as_quoted("loss 0.010337", ["loss 0.010338"])  # other figures are verbatim


@pytest.mark.parametrize("name", READMES)
def test_the_readme_quotes_three_outputs(name):
    assert len(quoted_blocks(name)) == 3


@pytest.fixture(scope="module")
def lesson_05_backward() -> str:
    finished = run_in_process(ROOT / "05_gradient_computation_backward.py", ["--device", "cpu"])
    assert finished.code == 0
    return finished.stdout


@pytest.mark.parametrize("name", READMES)
def test_the_lesson_excerpt_is_what_05_backward_prints(name, lesson_05_backward):
    lines = quoted_blocks(name)[0]
    if f"torch {torch.__version__} " not in lines[0]:
        lines = lines[1:]  # the header names the installed torch; another build prints another
    assert_quoted(lines, lesson_05_backward)


TRAINER_OUTPUT: dict[str, str] = {}


def trainer_output(argv: list[str], capsys) -> str:
    """What `python -m tensor_features.train ARGV --device cpu` prints, run once per argv."""
    key = " ".join(argv)
    if key not in TRAINER_OUTPUT:
        capsys.readouterr()
        assert train.main([*argv, "--device", "cpu"]) == 0
        TRAINER_OUTPUT[key] = capsys.readouterr().out
    return TRAINER_OUTPUT[key]


@pytest.mark.parametrize("name", READMES)
@pytest.mark.parametrize("block, argv", [(1, []), (2, ["--loss", "sobolev"])], ids=["mse", "sobolev"])
def test_the_trainer_excerpts_are_what_the_trainer_prints(name, block, argv, capsys):
    assert_quoted(quoted_blocks(name)[block], trainer_output(argv, capsys))


# The twins.

FENCE = re.compile(r"^```[^\n]*\n.*?^```[ \t]*$", flags=re.S | re.M)
OTHER_LANGUAGE = {"README.md": "README.ko.md", "README.ko.md": "README.md"}


def prose(name: str) -> list[str]:
    """The README's lines outside fenced code blocks."""
    return FENCE.sub("", readme(name)).splitlines()


def headings(name: str) -> list[int]:
    """The level of each heading, in order."""
    return [len(line) - len(line.lstrip("#")) for line in prose(name) if re.match(r"#{1,6} ", line)]


def tables(name: str) -> list[int]:
    """The number of rows of each table, in order (header and separator rows included)."""
    counts, previous = [], False
    for line in prose(name):
        row = line.startswith("|")
        if row and not previous:
            counts.append(0)
        if row:
            counts[-1] += 1
        previous = row
    return counts


def links(name: str) -> list[str]:
    """The targets of the links and images outside code blocks, in order, but the link to the other language."""
    targets = re.findall(r"\]\(([^)\s]+)\)", "\n".join(prose(name)))
    return [target for target in targets if target != OTHER_LANGUAGE[name]]


@pytest.mark.parametrize("name", READMES)
def test_each_readme_links_to_the_other_at_the_top(name):
    top = "\n".join(readme(name).splitlines()[:4])
    assert f"]({OTHER_LANGUAGE[name]})" in top


def test_the_two_readmes_have_the_same_headings():
    assert headings("README.md") == headings("README.ko.md")
    assert len(headings("README.md")) >= 10


def test_the_two_readmes_have_the_same_tables():
    assert tables("README.md") == tables("README.ko.md")
    assert len(tables("README.md")) == 3


def test_the_two_readmes_have_the_same_code_blocks_verbatim():
    english, korean = (FENCE.findall(readme(name)) for name in READMES)
    assert len(english) >= 10
    for index, (one, other) in enumerate(zip(english, korean)):
        assert one == other, f"code block {index + 1} differs:\n{one}\n---\n{other}"
    assert len(english) == len(korean)


def test_the_two_readmes_have_the_same_links():
    assert links("README.md") == links("README.ko.md")
    assert "docs/performance.md" in links("README.md")

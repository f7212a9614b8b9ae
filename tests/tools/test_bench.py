"""The benchmark runs, its figures are consistent, and its measuring tools measure what they say.

No timing is asserted here: the machine is shared and noisy, and timings belong to `make bench`.
"""

import json
import math

import pytest
import torch

from bench import __main__ as bench_cli
from bench.measure import peak_rss_mb, process_run_output
from bench.rows.convergence import gd_epoch_bound, time_to_solution
from bench.rows.startup import startup
from bench.rows.test_suite import failure_note
from bench.table import HEADER, Figure, Row, render_markdown
from tests.support import run_script, terminal_usage_error, usage_error
from tensor_features.trainer.fitting import FitPlan, fit
from tensor_features.lab.lessons import lesson_paths
from tensor_features.load_data import load_data
from tensor_features.trainer.model import Optimum, epochs_to_within, feature_map, initial_weights, least_squares_optimum


def test_gd_bound_holds_for_the_original_problem():
    # Oracle: the trajectory itself. The textbook bound must never be beaten by the real run,
    # and one epoch less than the bound must not be guaranteed by it.
    x, y = load_data(100, 0.1, seed=0)
    phi = feature_map(x, 3)
    optimum = least_squares_optimum(phi, y)
    for lr in (0.1, 0.5, optimum.best_lr):
        losses = fit(phi, y, initial_weights(3, 0, torch.device("cpu")), FitPlan(lr, 3000)).losses
        bound = gd_epoch_bound(optimum, lr, losses[0])
        observed = epochs_to_within(losses, optimum.loss)
        assert observed is not None and observed <= bound
        rho, excess = optimum.contraction(lr), losses[0] - optimum.loss
        assert rho ** (2 * bound) * excess <= 0.01 * optimum.loss < rho ** (2 * (bound - 1)) * excess


def test_gd_bound_edge_cases():
    eigenvalues = torch.tensor([0.5, 1.0], dtype=torch.float64)
    optimum = Optimum(torch.zeros(2, 1), 1.0, eigenvalues)
    assert gd_epoch_bound(optimum, 0.1, initial_loss=1.005) == 0  # already within 1%
    assert gd_epoch_bound(optimum, 4.0, initial_loss=2.0) == math.inf  # lr > 2/λmax: no bound


@pytest.mark.processes
def test_peak_rss_sees_a_known_allocation():
    # Oracle: the bytes we ask for. 50 Mi float32 ones = 200 MiB, all pages touched.
    idle, code = peak_rss_mb(["-c", "import torch"])
    big, code_big = peak_rss_mb(["-c", "import torch; t = torch.ones(50 * 2**20)"])
    assert code == code_big == 0
    assert big - idle == pytest.approx(200, abs=15)


def test_row_6_names_the_failing_tests():
    """A failing suite breaks row 6; its note says which tests failed (from pytest's -ra summary)."""
    summary = ("....F\n=== short test summary info ===\nSKIPPED [1] tests/test_a.py:3: no CUDA device\n"
               "FAILED tests/test_a.py::test_one - AssertionError: 1 == 2\n"
               "FAILED tests/test_b.py::test_two[cpu] - assert False\nERROR tests/test_c.py::test_three\n"
               "FAILED tests/test_d.py::test_four\n2 failed, 1 error in 3.0s\n")
    assert failure_note(1, summary) == ("pytest exit code 1: tests/test_a.py::test_one, tests/test_b.py::test_two[cpu], "
                                        "tests/test_c.py::test_three and 1 more")
    assert failure_note(2, "no summary") == "pytest exit code 2"
    # The note still reads as broken to make bench ("exit code" in a note: bench/__main__.py).
    assert "exit code" in failure_note(1, summary)
    seconds, code, output = process_run_output(["-c", "print('to the file'); raise SystemExit(3)"])
    assert (code, output) == (3, "to the file\n") and seconds > 0


@pytest.mark.processes
def test_startup_row_times_a_lesson_against_bare_import():
    lesson = next(p for p in lesson_paths() if "backward" in p.name)  # a short lesson
    (row,) = startup(torch.device("cpu"), [lesson], rounds=1)
    assert row.key == "1a" and row.what == "whole run: lesson 05 backward" and row.cpu.note == ""
    assert row.cpu.value > 0 and row.cpu.reference > 0 and row.cpu.met is None  # a report, no goal


@pytest.mark.processes
def test_bench_cli_small(tmp_path):
    out = tmp_path / "out" / "bench.json"
    out.parent.mkdir()
    # Rows 2 and 3 from the terminal; row 4 (16 s of fits) is checked in process below.
    result = run_script("-m", "bench", "--rows", "2,3", "--device", "cpu", "--n", "4096", "--size", "8",
                        "--repeats", "1", "--json", str(out), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    rows = {row["key"]: row for row in report["rows"]}
    assert sorted(rows) == ["2a", "2b", "2c", "3a", "3b", "3c", "3d"]
    assert report["machine"]["torch"] == torch.__version__
    for row in rows.values():
        cpu = row["cpu"]
        if cpu["value"] is not None and cpu["reference"]:
            assert cpu["ratio"] == pytest.approx(cpu["value"] / cpu["reference"])
        assert row["cuda"] is None  # --device cpu
    assert all(rows[key]["cpu"]["met"] for key in ("2a", "2b", "2c"))  # the three Jacobians agree
    for key in rows:
        assert result.stdout.count(f"\n{key} ") == 1  # one table line per row
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["out", "out/bench.json"]


def test_time_to_solution_rows_respect_the_bound():
    rows = {row.key: row for row in time_to_solution(torch.device("cpu"), max_epochs=3000, starts=2)}
    assert sorted(rows) == ["4a", "4b", "4c", "4d"]
    for key in ("4a", "4b"):  # the textbook bound is a bound: the real run needs no more epochs
        assert rows[key].cpu.value <= rows[key].cpu.reference
    assert rows["4c"].cpu.value == rows["4a"].cpu.value and rows["4c"].cpu.reference == rows["4b"].cpu.value


def test_bench_markdown_table_has_every_column():
    rows = [Row("9", "a row", "≤ 1", Figure(2.0, 4.0, "s", met=True))]
    info = {"cpu": "x", "cores": 2, "torch_threads": 2, "python": "3", "torch": "t", "gpu": "no GPU"}
    lines = render_markdown(rows, info).splitlines()
    header, data = lines[2], lines[4]
    assert header.count("|") == data.count("|") == len(HEADER) + 1
    assert "| 2 s | 4 s | 0.5 | ok | no GPU |" in data


@pytest.mark.parametrize("args, named", [
    (["--rows", "99"], "--rows"), (["--rows", "x"], "--rows"), (["--n", "2"], "--n"),
    (["--json", "."], "--json"), (["--json", ""], "--json"), (["--json", "no-such-folder/x.json"], "--json"),
    (["--json", "/proc/x.json"], "--json"), (["--json", "bench.txt"], "--json"), (["--repeats", "0"], "--repeats"),
])
def test_bench_bad_input_is_one_line_and_exit_2(args, named, capsys):
    assert named in usage_error(bench_cli.main, args, capsys)


@pytest.mark.processes
def test_bench_bad_input_from_the_terminal_has_no_traceback():
    assert "--rows" in terminal_usage_error("-m", "bench", "--rows", "99")

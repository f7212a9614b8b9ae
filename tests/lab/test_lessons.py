"""Every lesson, as a learner runs it: the teaching order, one terminal run each, --help and a bad
flag, and the `make run` summary."""

import json
import re

import pytest

from tests.support import ROOT, lesson_param, run_in_process, terminal_run
from tensor_features.lab.lessons import LESSONS, lesson_paths, main as run_all, short_name


def test_the_teaching_order_lists_every_lesson_file_once():
    on_disk = sorted(p.name for p in ROOT.glob("[0-9][0-9]_*.py"))
    assert sorted(LESSONS) == on_disk and len(set(LESSONS)) == len(LESSONS)
    assert [p.name for p in lesson_paths()] == list(LESSONS)
    # Chapter by chapter, 01 (derivatives by hand) first.
    chapters = [name[:2] for name in LESSONS]
    assert chapters == sorted(chapters) and chapters[0] == "01"
    # The original description's order within chapter 05, not the alphabet's.
    chapter_05 = [short_name(name) for name in LESSONS if name.startswith("05_")]
    assert chapter_05 == ["05 backward", "05 accumulation", "05 retain_graph", "05 detach", "05 vjp"]


@pytest.mark.parametrize("path", [lesson_param(p, p) for p in lesson_paths()],
                         ids=lambda p: short_name(p.name))
def test_runs_in_a_terminal_and_every_check_matches(path, shared_folder):
    """One process per lesson, as `python LESSON --device cpu` from another folder (the run
    tests/lab/test_tries.py compares each Try with: tests/support.py, terminal_run)."""
    run = terminal_run(path, shared_folder)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr
    assert "Traceback" not in run.stderr and "FAIL" not in run.stdout
    counted = re.search(r"^(\d+)/(\d+) checks match across (\d+) observations\.$", run.stdout, re.M)
    assert counted and counted[1] == counted[2] and int(counted[1]) > 0
    assert len(re.findall(r"^\[\d+\] ", run.stdout, re.M)) == int(counted[3])
    report = json.loads(run.summary)
    assert report["passed"] == report["total"] == int(counted[1]) and report["device"] == "cpu"
    assert run.left == ("summary.jsonl",)  # wrote nothing else


@pytest.mark.parametrize("path", lesson_paths(), ids=lambda p: short_name(p.name))
def test_help_and_a_bad_device(path):
    helped = run_in_process(path, ["--help"])
    docstring_title = path.read_text().split('"""')[1].splitlines()[0]
    assert helped.code == 0 and docstring_title in helped.stdout and "--device" in helped.stdout
    bad = run_in_process(path, ["--device", "tpu"])
    assert bad.code == 2 and bad.stderr.count("\n") == 1 and "--device" in bad.stderr


def test_make_run_summary_has_one_line_per_lesson(capsys):
    code = run_all(["--device", "cpu", "--only", "05_gradient_computation_backward", "--no-trainer"])
    out = capsys.readouterr().out
    assert code == 0
    summary = out[out.index("\nSummary"):]
    assert re.search(r"05 backward +(\d+)/\1 checks match +\d+\.\d s  ok", summary), summary


def test_make_run_rejects_an_unknown_lesson(capsys):
    with pytest.raises(SystemExit) as done:
        run_all(["--only", "no-such-lesson"])
    assert done.value.code == 2 and "--only" in capsys.readouterr().err


def test_a_closed_pipe_ends_the_lesson_quietly():
    """`python LESSON | head -1`: the reader goes away; no traceback, exit 1."""
    import os
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "05_gradient_computation_backward.py", "--device", "cpu"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
                             env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    assert child.stdout.readline().startswith(b"05 ")
    child.stdout.close()
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=120) == 1 and stderr == "", stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is visible")
def test_make_run_without_a_gpu_stops_at_once_for_device_cuda(capsys):
    with pytest.raises(SystemExit) as done:
        run_all(["--device", "cuda"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and "no CUDA device" in err

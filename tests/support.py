"""The tests' shared helpers: load_lesson (a lesson file as an inert module), a quiet Lab, the device
parametrization, and running a program as a learner would (in process, or in a terminal)."""

from __future__ import annotations

import errno
import io
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tensor_features.lab.core import Lab
from tensor_features.lab.lessons import load_lesson, run_in_process  # noqa: F401 (for the tests)

ROOT = Path(__file__).resolve().parent.parent

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


@dataclass(frozen=True)
class Promise:
    """What one of a lesson's Try lines does, as a test checks it: the exit code, and text the
    output gains (absent from the unchanged lesson's output). A lesson's test file lists them in
    TRY_PROMISES, in the order of the lesson's TRIES; tests/lab/test_tries.py runs each Try."""

    shows: tuple[str, ...]
    exit: int = 0


# Lessons whose every run starts a process group of their own (09 starts two ranks): their runs
# (the terminal run, each Try, the notebook) are marked `processes` (pytest.ini), so that
# make test-processes runs them and make test stays under its 3 minutes.
STARTS_PROCESSES = ("09_distributed_gradients_ddp.py",)


def lesson_param(path: Path, *values):
    """pytest.param(*values) for a test of the lesson at path, marked `processes` if it starts them."""
    marks = [pytest.mark.processes] if Path(path).name in STARTS_PROCESSES else []
    return pytest.param(*values, marks=marks)


def quiet_lab(device: str = "cpu") -> Lab:
    """A Lab that prints into a buffer; its .failed list is what a test checks."""
    return Lab("test", device, stream=io.StringIO())


def run_script(*args: str, cwd: Path | None = None, timeout: float = 120,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python ARGS...` as a learner would, from ROOT unless told otherwise (env: extra variables)."""
    # From another folder, `-m tensor_features...` finds the package as a learner's PYTHONPATH would.
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


@dataclass(frozen=True)
class TerminalRun:
    """A lesson run once as `python LESSON --device cpu` from an empty folder, with LAB_SUMMARY set."""

    returncode: int | None  # None: it ran past 300 s
    stdout: str
    stderr: str
    summary: str  # what finish() appended to LAB_SUMMARY ("" if nothing)
    left: tuple[str, ...]  # the files in the folder afterwards


def terminal_run(path: Path, shared: Path) -> TerminalRun:
    """The unchanged lesson's terminal run, made once per pytest run and read by every test of that
    lesson (its run in tests/lab/test_lessons.py, the unchanged output in tests/lab/test_tries.py),
    whichever worker asks first: the result is kept in `shared` (conftest.py's shared_folder), and
    a lock makes the other worker wait for it rather than run the lesson again. A run that timed
    out is kept too (exit code None), so that its other tests fail at once instead of waiting."""
    import json

    from filelock import FileLock  # torch's own dependency; works where fcntl does not (Windows)

    from tensor_features.lab.core import SUMMARY_ENV

    path = Path(path)
    kept = shared / f"{path.stem}.json"
    with FileLock(shared / f"{path.stem}.lock"):
        try:
            fields = json.loads(kept.read_text())
        except (OSError, ValueError):  # not made yet (or cut off by a worker that died writing it)
            with tempfile.TemporaryDirectory(prefix="lesson-run-") as folder:
                summary = Path(folder) / "summary.jsonl"
                try:
                    result = run_script(str(path), "--device", "cpu", cwd=Path(folder), timeout=300,
                                        env={SUMMARY_ENV: str(summary)})
                    code, out, err = result.returncode, result.stdout, result.stderr
                except subprocess.TimeoutExpired as late:
                    code, out = None, (late.stdout or b"").decode(errors="replace")
                    err = "timed out after 300 s"
                fields = {"returncode": code, "stdout": out, "stderr": err,
                          "summary": summary.read_text() if summary.exists() else "",
                          "left": sorted(p.name for p in Path(folder).iterdir())}
            written = kept.with_suffix(".part")
            written.write_text(json.dumps(fields))
            os.replace(written, kept)  # whole or not at all
    return TerminalRun(**{**fields, "left": tuple(fields["left"])})


def playground_section(number: int) -> str:
    """Section §number of "실험 1: Autograd Playground" in docs/original-description.ko.md, the
    description the lessons' "original example" docstrings point at."""
    text = (ROOT / "docs" / "original-description.ko.md").read_text()
    playground = text[text.index("## 실험 1: Autograd Playground"): text.index("## 실험 2")]
    return playground[playground.index(f"### {number}."): playground.index(f"### {number + 1}.")]


def assert_caught(error: BaseException | None, error_type: type, substring: str) -> None:
    """A lesson caught and showed an error on purpose; check it is the one it claims."""
    with pytest.raises(error_type, match=substring.replace("(", r"\(").replace(")", r"\)")):
        if error is not None:
            raise error


def usage_error(main, args: list[str], capsys) -> str:
    """Call a program's main(argv) in process; it must exit 2 with one line on stderr. Returns that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and stderr.count("\n") == 1, stderr
    return stderr


def terminal_usage_error(*args: str) -> str:
    """Run `python ARGS` as a learner would; it must exit 2 with one line and no traceback."""
    result = run_script(*args)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listened on a moment ago (the OS picked it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RefusingStdout(io.TextIOBase):
    """A stdout that takes nothing: its reader has gone (EPIPE) or its disk is full (ENOSPC).

    Like a buffered stream, what it refused stays waiting: a flush after a failed write fails too.
    """

    def __init__(self, code: int):
        self.code, self.waiting = code, False

    def writable(self) -> bool:
        return True

    def _refuse(self) -> OSError:
        kind = BrokenPipeError if self.code == errno.EPIPE else OSError
        return kind(self.code, os.strerror(self.code))

    def write(self, text: str) -> int:
        self.waiting = True
        raise self._refuse()

    def flush(self) -> None:
        if self.waiting:
            raise self._refuse()

    def close(self) -> None:  # nothing to release; the real one's final flush is what the programs handle
        pass

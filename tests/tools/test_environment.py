"""No traceback, whatever the environment: Ctrl-C, an unwritable LAB_SUMMARY or torch.compile cache,
a stdout that refuses output, memory running out, a late usage error. Each program ends with one line
and a clean exit code (130 after Ctrl-C), and leaves no half-written file and no folder it made.

Most cases run in this process: a monkeypatched function raises KeyboardInterrupt, or this process
sends itself SIGINT while a program's handler is installed. One test starts real processes: the
`make run` runner, whose child is a lesson, and presses Ctrl-C once the lesson has printed a line. The
download's cases (Ctrl-C mid-transfer, a server that never answers, a corrupt cache) are in
tests/trainer/test_download.py; the fuzzed environments in tests/tools/test_fuzz_cli.py.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

from tests.support import ROOT, RefusingStdout, run_in_process, usage_error
from tensor_features import cli, train
from tensor_features.lab import lessons
from tensor_features.lab.lessons import lesson_paths
from tensor_features.trainer import experiment

BACKWARD = next(p for p in lesson_paths() if p.name.startswith("05_gradient_computation_backward"))
MAIN_THREAD = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                                 reason="signal handlers live in the main thread")

# A lesson that waits: Ctrl-C reaches it in the middle of an observation, whatever the machine's speed.
SLOW_LESSON = textwrap.dedent('''\
    """A lesson that waits, so that Ctrl-C finds it running."""
    import sys
    import time
    from pathlib import Path

    from tensor_features.lab.core import Lab

    lab = Lab.start("slow", __doc__, __name__)


    def wait(lab):
        """Wait for Ctrl-C."""
        Path(sys.argv[0]).with_suffix(".running").touch()  # for a test in this process: now
        for _ in range(12000):  # short sleeps: under pytest's capture a signal may not cut a long one short
            time.sleep(0.01)
        lab.check(1, 1)


    lab.run(wait)
    lab.finish()
''')


def lines(text: str) -> list[str]:
    return text.splitlines()


def one_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.endswith("\n") and "Traceback" not in stderr, stderr
    return stderr.strip()


# -- Ctrl-C -----------------------------------------------------------------------------------------

def test_run_main_ends_ctrl_c_with_one_line_and_130(capsys):
    def main():
        print("half of the output")
        raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGINT)
    assert cli.run_main(main) == 130
    captured = capsys.readouterr()
    assert captured.out == "half of the output\n"  # what was printed before Ctrl-C is still written
    assert one_line(captured.err).endswith(": interrupted")
    assert signal.getsignal(signal.SIGINT) is before  # in process, the handler is put back


def test_ctrl_c_while_plotting_leaves_no_plot_and_no_folder(monkeypatch, tmp_path, capsys):
    from tensor_features import plots

    monkeypatch.chdir(tmp_path)
    saved = plots._save

    def second_plot_interrupted(fig, path):
        if path.name != "loss_curves.png":
            path.write_bytes(b"\x89PNG half a plot")  # what a cut-off savefig leaves
            raise KeyboardInterrupt
        return saved(fig, path)

    monkeypatch.setattr(plots, "_save", second_plot_interrupted)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "fit.png").write_bytes(b"the last run's plot")
    for folder in ("new/plots", "mine"):
        code = cli.run_main(lambda: train.main(["--device", "cpu", "--epochs", "5", "--update", "manual",
                                                "--plot", folder]))
        assert code == 130 and one_line(capsys.readouterr().err).endswith(": interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no new/, no new/plots/
    # The folder that was there keeps what it held, whole; no plot of the interrupted run, no staging folder.
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["fit.png"]
    assert (tmp_path / "mine" / "fit.png").read_bytes() == b"the last run's plot"


def test_ctrl_c_while_measuring_leaves_no_json(monkeypatch, tmp_path, capsys):
    from bench import __main__ as bench_cli

    def interrupted(rows, device, args):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_cli, "measure", interrupted)
    target = tmp_path / "bench.json"
    assert cli.run_main(lambda: bench_cli.main(["--rows", "4", "--json", str(target)])) == 130
    assert one_line(capsys.readouterr().err).endswith(": interrupted")
    assert list(tmp_path.iterdir()) == []


def test_whole_file_is_all_or_nothing(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(KeyboardInterrupt), cli.whole_file(target) as partial:
        partial.write_text("{half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with cli.whole_file(target) as partial:
        partial.write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"] and target.read_text() == "{}"


@MAIN_THREAD
def test_ctrl_c_in_a_lesson_in_process(tmp_path):
    """A real SIGINT to this process while a lesson runs in it: the lab's handler ends it, 130."""
    lesson = tmp_path / "slow_lesson.py"
    lesson.write_text(SLOW_LESSON)
    running = lesson.with_suffix(".running")

    def press_ctrl_c():
        deadline = time.monotonic() + 60
        while not running.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # as a terminal would: the main thread

    before = signal.getsignal(signal.SIGINT)
    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    finished = run_in_process(lesson, [])
    presser.join()
    assert finished.code == 130 and one_line(finished.stderr) == "slow_lesson.py: interrupted"
    assert "[1] Wait for Ctrl-C." in finished.stdout and "checks match" not in finished.stdout  # it stopped there
    assert signal.getsignal(signal.SIGINT) is before


@MAIN_THREAD
def test_ctrl_c_while_training_in_process(tmp_path, monkeypatch, capsys):
    """A real SIGINT to this process while the trainer trains: run_main's handler ends it, 130, and the
    --plot folder, made only to write the plots, is not there."""
    training = threading.Event()

    def train_until_interrupted(*args, **kwargs):
        training.set()
        for _ in range(6000):  # short sleeps: under pytest's capture a signal may not cut a long one short
            time.sleep(0.01)
        pytest.fail("SIGINT did not stop the training")

    def press_ctrl_c():
        if training.wait(timeout=60):
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # as a terminal would: the main thread

    monkeypatch.setattr(train, "run", train_until_interrupted)
    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    code = cli.run_main(lambda: train.main(["--device", "cpu", "--plot", str(tmp_path / "new" / "plots")]))
    presser.join()
    assert code == 130 and one_line(capsys.readouterr().err).endswith(": interrupted")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_for_real(tmp_path):
    """`make run` started as a learner starts it, its child a lesson, and Ctrl-C pressed in the terminal
    (SIGINT to the whole foreground process group) once the lesson has printed its first line."""
    lesson = tmp_path / "slow_lesson.py"
    lesson.write_text(SLOW_LESSON)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    # The runner, with its teaching order replaced by the slow lesson.
    runner = ("import sys, pathlib; from tensor_features import cli; from tensor_features.lab import lessons; "
              f"lessons.lesson_paths = lambda: [pathlib.Path({str(lesson)!r})]; "
              "sys.exit(cli.run_main(lambda: lessons.main(['--device', 'cpu', '--no-trainer'])))")
    child = subprocess.Popen([sys.executable, "-c", runner], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        first = child.stdout.readline()
        while first and not first.startswith("slow "):  # the runner's own lines, then its lesson's title
            first = child.stdout.readline()
        assert first, child.stderr.read()
        os.killpg(child.pid, signal.SIGINT)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    # The lesson says it was interrupted, then the runner: one line each, the runner's last; both 130.
    assert child.returncode == 130 and lines(err) == ["slow_lesson.py: interrupted", "python -c: interrupted"], err
    assert {p.name for p in tmp_path.iterdir()} <= {"slow_lesson.py", "slow_lesson.running"}


def test_the_runner_stops_its_child_and_reads_no_cut_off_summary(tmp_path, monkeypatch):
    summary = tmp_path / "summary.jsonl"
    summary.write_text('{"title": "05 · backward", "pass')
    assert lessons._last_report(summary) is None and lessons._last_report(tmp_path / "missing") is None
    summary.write_text('{"passed": 3, "total": 3}\n')
    assert lessons._last_report(summary) == {"passed": 3, "total": 3}


# -- an environment setting that cannot be used ---------------------------------------------------------

@pytest.mark.parametrize("place", ["a_file/summary.jsonl", "/proc/no-such-folder/summary.jsonl"])
def test_an_unwritable_lab_summary_stops_before_any_work(place, tmp_path, monkeypatch, capsys):
    """Under a plain file or in /proc: unwritable for root too. One line naming it, exit code 2."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.setenv("LAB_SUMMARY", place)
    monkeypatch.setattr(train, "run", lambda *a, **k: pytest.fail("trained with an unwritable LAB_SUMMARY"))
    with pytest.raises(SystemExit) as done:
        train.main(["--device", "cpu"])
    assert done.value.code == 2
    assert one_line(capsys.readouterr().err).startswith(f"python -m tensor_features.train: error: LAB_SUMMARY={place} "
                                                       "cannot be written (")
    finished = run_in_process(BACKWARD, ["--device", "cpu"])
    assert finished.code == 2 and finished.stdout == ""
    assert one_line(finished.stderr).startswith(f"{BACKWARD.name}: error: LAB_SUMMARY={place} cannot be written")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_a_lab_summary_that_fails_at_the_end_is_one_line(tmp_path, monkeypatch, capsys):
    """/dev/full opens, and every write to it fails: found at the end, after the lesson's output."""
    monkeypatch.setenv("LAB_SUMMARY", "/dev/full")
    finished = run_in_process(BACKWARD, ["--device", "cpu"])
    assert finished.code == 2 and "checks match" in finished.stdout
    assert one_line(finished.stderr) == f"{BACKWARD.name}: error: LAB_SUMMARY=/dev/full cannot be written " \
                                        "(No space left on device)"
    with pytest.raises(SystemExit) as done:
        train.main(["--device", "cpu", "--epochs", "3"])
    assert done.value.code == 2
    assert "LAB_SUMMARY=/dev/full cannot be written" in one_line(capsys.readouterr().err)


def test_an_unwritable_compile_cache_stops_fast_before_compiling(tmp_path, monkeypatch, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "a_file" / "cache"))
    monkeypatch.setattr(train, "run", lambda *a, **k: pytest.fail("compiled into an unwritable cache"))
    with pytest.raises(SystemExit) as done:
        train.main(["--device", "cpu", "--fast"])
    assert done.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert f"TORCHINDUCTOR_CACHE_DIR={tmp_path / 'a_file' / 'cache'} cannot be written (Not a directory)" in line
    # A cache folder that can be made passes, and the check leaves nothing: torch.compile makes it.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "new" / "cache"))
    assert cli.environment_problem(compiles=True) is None and not (tmp_path / "new").exists()
    assert cli.environment_problem(compiles=False) is None  # without --fast it is not read


# -- stdout that refuses output -------------------------------------------------------------------------

@pytest.mark.parametrize("code, said", [(errno.ENOSPC, 1), (errno.EPIPE, 0)])
def test_a_refused_stdout_ends_every_kind_of_program_alike(code, said, monkeypatch, capsys):
    """Full: one line, exit code 1. Closed (`| head`): no line, the reader has gone; exit code 1."""
    monkeypatch.setattr(sys, "stdout", RefusingStdout(code))
    assert cli.run_main(lambda: train.main(["--device", "cpu", "--epochs", "3"])) == 1
    monkeypatch.setattr(sys, "stdout", RefusingStdout(code))  # (the program pointed stdout at devnull)
    with pytest.raises(SystemExit) as done:  # --help: argparse alone would pass over it and exit 0
        cli.run_main(lambda: train.main(["--help"]))
    assert done.value.code == 1
    finished = run_in_process(BACKWARD, ["--device", "cpu"], stdout=RefusingStdout(code))
    assert finished.code == 1
    err = capsys.readouterr().err + finished.stderr
    assert len(lines(err)) == 3 * said and "Traceback" not in err, err
    assert all(line.endswith("error: cannot write the output: No space left on device") for line in lines(err))


# -- memory, late usage errors ---------------------------------------------------------------------------

def test_running_out_of_memory_is_one_line_with_the_size(monkeypatch, capsys):
    def huge(n, *args, **kwargs):  # 2**60 bytes: past any address space, so it fails at once, allocating nothing
        return torch.empty(2**60, dtype=torch.uint8), None

    monkeypatch.setattr(experiment, "load_data", huge)
    assert cli.run_main(lambda: train.main(["--device", "cpu"])) == 1
    line = one_line(capsys.readouterr().err)
    assert f"error: out of memory: an allocation of {cli.byte_text(2**60)} failed (this machine has" in line
    assert cli.byte_text(2**60) == "1.15 EB" and cli.byte_text(4_190_000_000) == "4.19 GB"
    cuda = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity ...")
    assert cli.out_of_memory(cuda).startswith("out of memory: an allocation of 2.00 GiB failed")
    assert cli.out_of_memory(MemoryError()).startswith("out of memory")
    assert cli.out_of_memory(RuntimeError("Trying to backward through the graph a second time")) is None


def test_a_late_usage_error_leaves_no_plot_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # --n 5 --degree 5 passes the flags' checks; the data's rank (found while training) does not.
    assert "use --n 6" in usage_error(train.main, ["--device", "cpu", "--n", "5", "--degree", "5",
                                                   "--plot", "new/plots"], capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_plot_that_cannot_be_written_is_found_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken" / "fit.png").mkdir(parents=True)  # a folder where a plot's file goes
    monkeypatch.setattr(train, "run", lambda *a, **k: pytest.fail("trained before finding the plot unwritable"))
    stderr = usage_error(train.main, ["--device", "cpu", "--plot", "taken"], capsys)
    assert "--plot taken: cannot write taken/fit.png (Is a directory)" in stderr
    (tmp_path / "a_file").write_text("not a folder")
    assert "cannot write into the folder (Not a directory)" in usage_error(
        train.main, ["--device", "cpu", "--plot", "a_file/plots"], capsys)

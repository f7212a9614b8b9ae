"""The lessons in teaching order, and the ways to run them.

    python -m tensor_features.lab.lessons [--device auto|cpu|cuda] [--only TEXT] [--no-trainer]

runs every lesson in order, each in its own process as a learner would run it, then the
trainer, and ends with a summary: one line per lesson (checks matched, seconds) and the
trainer's verdict. `make run` is this command. Ctrl-C stops the lesson that is running (it says
so in a line) and then the runner (one line, exit code 130).

LESSONS is the one list of the teaching order: `make run`, the bench and the tests read it.
Lessons are files at the top of the repository whose names start with a digit, so they are
loaded by path (load_lesson), not imported by name.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parents[2]

# The on-ramp first: derivatives by hand (01), then an autograd engine written from scratch (02).
# Then tensors (03), autograd in the order of the original description (backward, accumulation,
# retain_graph, detach, vjp), and the chapters that build on it (06-09).
# One list; everything that runs lessons reads it.
LESSONS = (
    "01_derivatives_by_hand_finite_differences.py",
    "01_derivatives_by_hand_gradient_descent.py",
    "02_autograd_from_scratch_scalar_engine.py",
    "02_autograd_from_scratch_tensor_engine.py",
    "03_tensor_attributes_and_methods_basics.py",
    "03_tensor_attributes_and_methods_storage.py",
    "04_computation_graph_pictured.py",
    "04_computation_graph_what_changes_it.py",
    "05_gradient_computation_backward.py",
    "05_gradient_computation_accumulation.py",
    "05_gradient_computation_retain_graph.py",
    "05_gradient_computation_detach.py",
    "05_gradient_computation_vjp.py",
    "06_extending_autograd_custom_function.py",
    "06_extending_autograd_hooks.py",
    "06_extending_autograd_saved_tensors.py",
    "07_debugging_gradients_inplace_and_anomaly.py",
    "07_debugging_gradients_nan_and_kinks.py",
    "07_debugging_gradients_clipping_and_scaling.py",
    "08_higher_order_forward_mode.py",
    "08_higher_order_hessians.py",
    "09_distributed_gradients_ddp.py",
)


def lesson_paths() -> list[Path]:
    """The lessons that exist, in teaching order."""
    return [ROOT / name for name in LESSONS if (ROOT / name).exists()]


def short_name(filename: str) -> str:
    """'05_gradient_computation_backward.py' -> '05 backward' (for tables and summaries)."""
    stem = Path(filename).stem
    number, _, rest = stem.partition("_")
    for chapter in ("derivatives_by_hand_", "autograd_from_scratch_", "computation_graph_",
                    "tensor_attributes_and_methods_", "gradient_computation_", "extending_autograd_",
                    "debugging_gradients_", "higher_order_", "distributed_gradients_"):
        rest = rest.removeprefix(chapter)
    return f"{number} {rest}"


def load_lesson(filename: str | os.PathLike):
    """Import a lesson file as a module (inert: its lab runs nothing); tests and bench use it."""
    path = Path(filename)
    path = path if path.is_absolute() else ROOT / path
    name = "lesson_" + path.stem
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Finished:
    """How an in-process run of a lesson ended."""

    code: int
    stdout: str
    stderr: str


def run_in_process(path: str | os.PathLike, argv: list[str] = (), stdout: TextIO | None = None) -> Finished:
    """Run a lesson file as `python PATH ARGV...` would, but inside this process.

    runpy executes it as __main__ (so its lab is live and parses argv); its output is captured,
    warnings included (written to stderr as a terminal shows them), and its sys.exit code returned.
    stdout, if given, is the stream the lesson prints into instead (a test's stand-in for a closed or
    full one). torch's global defaults and the SIGINT handler (the lab installs its own) are restored
    afterwards, so that a lesson (or a Try that edits one) cannot leak a setting into the next run.
    """
    import torch

    saved_argv, dtype, grad = sys.argv, torch.get_default_dtype(), torch.is_grad_enabled()
    saved_sigint = signal.getsignal(signal.SIGINT)
    out, err = stdout if stdout is not None else io.StringIO(), io.StringIO()
    code = 0
    sys.argv = [str(path), *argv]

    def show_warning(message, category, filename, lineno, file=None, line=None):
        err.write(warnings.formatwarning(message, category, filename, lineno, line))

    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            # As in a terminal: Python's default filter, each warning written to stderr.
            warnings.simplefilter("default")
            warnings.showwarning = show_warning
            runpy.run_path(str(path), run_name="__main__")
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if isinstance(done.code, str):
            err.write(done.code + "\n")
    finally:
        sys.argv = saved_argv
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)
        with contextlib.suppress(ValueError, TypeError):  # not the main thread; a handler set outside Python
            signal.signal(signal.SIGINT, saved_sigint)
    return Finished(code, out.getvalue() if isinstance(out, io.StringIO) else "", err.getvalue())


# -- make run ------------------------------------------------------------------------------------

STOP_SECONDS = (3, 5)  # after Ctrl-C: how long a child has to end on SIGINT, then on SIGTERM, before SIGKILL


def _run_child(args: list[str], summary: Path) -> tuple[int, float]:
    """Run `python ARGS` with its output going straight to the terminal; (exit code, seconds).

    The child starts with Ctrl-C ignored (SIG_IGN is inherited), until its lab or run_main installs
    its own handler, so that Ctrl-C during its imports is no traceback. Ctrl-C reaches it from a
    terminal at the same moment as this runner; from `kill -INT` only this runner, which passes it
    on. A child that does not end on it (still importing) is ended by SIGTERM, then SIGKILL; then the
    interrupt goes on up to run_main (one line, exit code 130).
    """
    from tensor_features.cli import sigint_handler

    env = {**os.environ, "LAB_SUMMARY": str(summary)}  # a lesson finds the package beside it (or installed)
    start = time.perf_counter()
    with sigint_handler(signal.SIG_IGN):  # inherited by the child; back to run_main's handler at once
        child = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env)
    try:
        code = child.wait()
    except BaseException:
        for stop, seconds in ((lambda: child.send_signal(signal.SIGINT), STOP_SECONDS[0]),
                              (child.terminate, STOP_SECONDS[1]), (child.kill, None)):
            with contextlib.suppress(ProcessLookupError):  # it may have ended already
                stop()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=seconds)
                break
        raise
    return code, time.perf_counter() - start


def _last_report(summary: Path) -> dict | None:
    """The child's one-line JSON summary; None if it wrote none (it stopped early) or a cut-off one."""
    try:
        return json.loads(summary.read_text(encoding="utf-8").splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None


def build_parser() -> argparse.ArgumentParser:
    from tensor_features.cli import OneLineArgumentParser, add_device_argument

    parser = OneLineArgumentParser(prog="python -m tensor_features.lab.lessons", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_argument(parser)
    parser.add_argument("--only", metavar="TEXT",
                        help="run only the lessons whose file name contains TEXT (a plain substring, not a pattern)")
    parser.add_argument("--no-trainer", action="store_true", help="skip the trainer at the end")
    return parser


def main(argv: list[str] | None = None) -> int:
    from tensor_features.cli import device_or_exit

    parser = build_parser()
    args = parser.parse_args(argv)
    device_or_exit(parser, args.device)  # one line now, not the same error from every lesson
    lessons = [p for p in lesson_paths() if args.only is None or args.only in p.name]
    if not lessons:
        parser.error(f"--only {args.only!r}: no lesson file name contains it")

    rows = []
    with tempfile.TemporaryDirectory(prefix="lab-summary-") as folder:
        for path in lessons:
            summary = Path(folder) / f"{path.stem}.jsonl"
            print(f"\n=== python {path.name} --device {args.device}", flush=True)
            code, seconds = _run_child([str(path), "--device", args.device], summary)
            report = _last_report(summary)
            rows.append((short_name(path.name), code, seconds, report))
        trainer = None
        if not args.no_trainer:
            summary = Path(folder) / "trainer.jsonl"
            print(f"\n=== python -m tensor_features.train --device {args.device}", flush=True)
            code, seconds = _run_child(["-m", "tensor_features.train", "--device", args.device], summary)
            report = _last_report(summary)
            trainer = (code, seconds, report)

    print("\nSummary")
    failed = []
    for name, code, seconds, report in rows:
        if report is not None:
            counted = f"{report['passed']}/{report['total']} checks match"
        else:
            counted = "no summary (the lesson stopped early)"
        mark = "ok" if code == 0 else f"exit {code}"
        print(f"  {name:<32} {counted:<22} {seconds:5.1f} s  {mark}")
        if code != 0:
            failed.append(name)
    if trainer is not None:
        code, seconds, report = trainer
        verdict = report["verdict"] if report else "no verdict (the trainer stopped early)"
        print(f"  {'trainer':<32} {verdict}  ({seconds:.1f} s){'' if code == 0 else f'  exit {code}'}")
        if code != 0:
            failed.append("trainer")
    if failed:
        print(f"Not everything held: {', '.join(failed)}.")
        return 1
    print(f"Every check of the {len(rows)} lesson{'s' if len(rows) != 1 else ''} held.")
    return 0


if __name__ == "__main__":
    from tensor_features.cli import run_main

    sys.exit(run_main(main))

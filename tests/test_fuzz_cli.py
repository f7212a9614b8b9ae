"""Bad input, fuzzed: command lines drawn from every program's real flags, with odd values.

Programs: every lesson, the trainer, the download, the bench and the `make run` runner. Each
flag's values come from a pool chosen by its argparse type (integers, numbers, choices, paths):
huge, tiny, negative, zero, nan, inf, empty, exponents, junk; paths that are folders, plain
files, missing, or unwritable. The property: exit code 0, 1 (a lesson disagreed) or 2 (usage
error), never a traceback; on 2, exactly one line on stderr, and for a usage error that line names
the flag at fault (or the stray word).

Everything runs in this process, in a temporary working folder. What would leave the machine or
take minutes is replaced by a stand-in: the download gets a refused 127.0.0.1 port, the bench's
measuring and the runner's child processes are skipped (their argument handling is what is
fuzzed). A lesson is run whole only when a flag of its own is drawn: `--device` alone is the
terminal run that tests/test_lessons.py already makes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import run_in_process
from tensor_features.lessons import lesson_paths, load_lesson, short_name

INTEGERS = ["-1", "0", "-0", "1", "2", "3", "12", "13", "100", "1e3", "2.5", "nan", "inf", "", " ", "0x10",
            "99999999999999999999", "-99999999999999999999", "1_0", "٣"]
NUMBERS = ["-1", "0", "-0", "1e-300", "5e-324", "1e-9", "0.1", "1", "2.5", "1e6", "1e7", "1e308", "1e309", "nan",
           "-nan", "inf", "-inf", "", "abc", "0x1p-3", "1e", "--"]
WORDS = ["", "x", "bogus", "-", "--", "é", "a b", "../../etc"]
PATHS = ["a_folder", "a_file.txt", "missing/deeper/out.png", "out.png", "out", "/proc/forbidden/out.png", "",
         "a_folder/", "a_file.txt/out.png", "out.PNG", "out.json"]
PATH_NAMES = {"PATH", "DIR", "PNG", "FILE"}


def value_pool(action: argparse.Action) -> list[str]:
    """Odd values for one flag, chosen by the kind of value it takes."""
    kind = getattr(action.type, "__name__", "")
    if action.choices:
        return [*map(str, action.choices), *WORDS]
    if kind == "file path" or (action.metavar or "") in PATH_NAMES or action.dest in {"plot", "json", "dest"}:
        return PATHS
    if kind == "integer" or action.type is int:
        return INTEGERS
    if kind in ("number", "learning rate") or action.type is float:
        return NUMBERS + (["auto"] if kind == "learning rate" else [])
    return WORDS + INTEGERS[:6]


def command_lines(parser: argparse.ArgumentParser, skip: set[str] = frozenset()):
    """A strategy for argv lists built from the parser's own optional flags (and one unknown flag)."""
    actions = [a for a in parser._actions if a.option_strings and a.dest != "help" and a.dest not in skip]

    def one_flag(action: argparse.Action):
        flag = st.sampled_from(action.option_strings)
        if action.nargs == 0:
            return flag.map(lambda f: [f])
        return st.tuples(flag, st.sampled_from(value_pool(action))).map(list)

    entries = st.one_of(*[one_flag(a) for a in actions], st.just(["--no-such-flag"]),
                        st.sampled_from(INTEGERS).map(lambda v: [v]))
    return st.lists(entries, max_size=4).map(lambda parts: [word for part in parts for word in part])


@contextlib.contextmanager
def scratch_folder():
    """A fresh working folder holding a folder and a plain file, as paths to draw from."""
    before = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="fuzz-") as folder:
        os.chdir(folder)
        Path("a_folder").mkdir()
        Path("a_file.txt").write_text("not an image\n")
        try:
            yield Path(folder)
        finally:
            os.chdir(before)


def call_main(main, argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of main(argv) in process; any exception but SystemExit fails the test."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return (0 if code is None else code), err.getvalue()


def assert_well_behaved(argv: list[str], code: int, stderr: str) -> None:
    assert "Traceback" not in stderr, (argv, stderr)
    assert code in (0, 1, 2), (argv, code, stderr)
    if code == 2:
        assert stderr.count("\n") == 1 and stderr.endswith("\n"), (argv, stderr)
        if stderr.rstrip().endswith("(see --help)"):  # a usage error: it names the flag (or stray word) at fault
            assert any(word.split("=")[0] in stderr for word in argv if word.strip()) or not argv, (argv, stderr)


FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# -- the lessons -----------------------------------------------------------------------------------

LESSONS = lesson_paths()


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: short_name(p.name))
def test_lesson_command_lines(path):
    parser = load_lesson(path).lab.parser
    own_flags = {o for a in parser._actions if a.dest not in ("help", "device") for o in a.option_strings}

    @settings(FUZZ, max_examples=12)
    @given(command_lines(parser))
    def check(argv):
        if not own_flags.intersection(argv) and "--help" not in argv and "-h" not in argv:
            try:  # only --device (or junk): the parse is what is new here
                with contextlib.redirect_stderr(io.StringIO()) as err:
                    parser.parse_args(argv)
                code, stderr = 0, err.getvalue()
            except SystemExit as done:
                code, stderr = done.code, err.getvalue()
            assert_well_behaved(argv, code, stderr)
            return
        with scratch_folder():
            finished = run_in_process(path, argv)
        assert_well_behaved(argv, finished.code, finished.stderr)

    check()


# -- the trainer, the download, the bench, the runner -------------------------------------------------

def test_trainer_command_lines():
    from tensor_features import config, train

    parser = config.build_parser()

    # --fast compiles (seconds per new shape); the trainer tests run it once.
    @settings(FUZZ, max_examples=40)
    @given(command_lines(parser, skip={"fast"}))
    def check(argv):
        with scratch_folder():
            code, stderr = call_main(train.main, ["--device", "cpu", "--epochs", "20", "--n", "64", *argv])
        assert_well_behaved(argv, code, stderr)

    check()


def test_download_command_lines():
    from tensor_features import download

    refused = download.Source(url="http://127.0.0.1:9/cifar.tar.gz", md5="0" * 32, filename="cifar.tar.gz")
    parser = argparse.ArgumentParser()
    parser.add_argument("--dest", metavar="DIR")
    parser.add_argument("--force", action="store_true")

    @settings(FUZZ, max_examples=15)
    @given(command_lines(parser))
    def check(argv):
        with scratch_folder():
            code, stderr = call_main(lambda a: download.main(a, source=refused), argv)
        assert_well_behaved(argv, code, stderr)

    check()


def test_bench_command_lines(monkeypatch):
    from bench import __main__ as bench_cli

    monkeypatch.setattr(bench_cli, "measure", lambda rows, device, args: [])  # arguments only
    parser = bench_cli.build_parser()

    @settings(FUZZ, max_examples=25)
    @given(command_lines(parser))
    def check(argv):
        with scratch_folder():
            code, stderr = call_main(bench_cli.main, argv)
        assert_well_behaved(argv, code, stderr)

    check()


def test_runner_command_lines(monkeypatch):
    from tensor_features import lessons

    monkeypatch.setattr(lessons, "_run_child", lambda args, summary: (0, 0.0))  # arguments only
    @settings(FUZZ, max_examples=15)
    @given(command_lines(lessons.build_parser()))
    def check(argv):
        code, stderr = call_main(lessons.main, argv)
        assert_well_behaved(argv, code, stderr)

    check()

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
terminal run that tests/lab/test_lessons.py already makes.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.support import RefusingStdout, run_in_process
from tensor_features.lab.lessons import lesson_paths, load_lesson, short_name

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


def call_main(main, argv: list[str], stdout: io.TextIOBase | None = None) -> tuple[int, str]:
    """(exit code, stderr) of main(argv) in process; any exception but SystemExit fails the test."""
    err = io.StringIO()
    with contextlib.redirect_stdout(stdout or io.StringIO()), contextlib.redirect_stderr(err):
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
            named = any(word.split("=")[0] in stderr if word.strip() else repr(word) in stderr for word in argv)
            assert named or not any(word.strip() for word in argv), (argv, stderr)


FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# -- the lessons -----------------------------------------------------------------------------------

LESSONS = lesson_paths()


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: short_name(p.name))
def test_lesson_command_lines(path):
    parser = load_lesson(path).lab.parser
    own_flags = {o for a in parser._actions if a.dest not in ("help", "device") for o in a.option_strings}

    # --try N runs the whole lesson again in a child process: tests/lab/test_tries.py runs it instead.
    @settings(FUZZ, max_examples=12)
    @given(command_lines(parser, skip={"try_number"}))
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


def download_flags() -> argparse.ArgumentParser:
    """The download's flags, for drawing command lines (its parser is built inside main)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--dest", metavar="DIR")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--timeout", type=float)
    return parser


def _refused_source():
    from tensor_features import download

    return download.Source(url="http://127.0.0.1:9/cifar.tar.gz", md5="0" * 32, filename="cifar.tar.gz")


REFUSED = _refused_source()  # port 9 (discard) on 127.0.0.1: nobody listens, the connection is refused


def test_download_command_lines():
    from tensor_features import download

    parser = download_flags()

    @settings(FUZZ, max_examples=15)
    @given(command_lines(parser))
    def check(argv):
        with scratch_folder():
            code, stderr = call_main(lambda a: download.main(a, source=REFUSED), argv)
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
    from tensor_features.lab import lessons

    monkeypatch.setattr(lessons, "_run_child", lambda args, summary: (0, 0.0))  # arguments only
    @settings(FUZZ, max_examples=15)
    @given(command_lines(lessons.build_parser()))
    def check(argv):
        code, stderr = call_main(lessons.main, argv)
        assert_well_behaved(argv, code, stderr)

    check()


# -- the environment -----------------------------------------------------------------------------------
# The same programs, each command line drawn together with an environment: LAB_SUMMARY or
# TORCHINDUCTOR_CACHE_DIR naming a place where nothing can be written (under a plain file, in /proc, or
# /dev/full, where every write fails: each holds for root too), and stdout closed (`| head`) or full
# (`> /dev/full`). The property: exit code 0, 1 or 2, no traceback, at most a few lines on stderr (one
# for exit code 2). Each program runs through its real entry, cli.run_main (a lesson through its Lab).

ENVIRONMENTS = [
    {},
    {"LAB_SUMMARY": "a_file.txt/summary.jsonl"},
    {"LAB_SUMMARY": "/proc/forbidden/summary.jsonl"},
    *([{"LAB_SUMMARY": "/dev/full"}] if os.path.exists("/dev/full") else []),
    {"TORCHINDUCTOR_CACHE_DIR": "a_file.txt/cache"},
]
STDOUTS = ["open", "closed", "full"]
QUICK_LESSONS = [p for p in LESSONS if short_name(p.name) in
                 ("03 storage", "05 backward", "05 retain_graph", "05 detach", "07 nan_and_kinks")]


def stdout_for(kind: str) -> io.TextIOBase:
    return {"open": io.StringIO, "closed": lambda: RefusingStdout(errno.EPIPE),
            "full": lambda: RefusingStdout(errno.ENOSPC)}[kind]()


@contextlib.contextmanager
def environment(variables: dict[str, str]):
    """The variables set (and every other one these tests draw unset) while the block runs."""
    saved = {name: os.environ.get(name) for name in ("LAB_SUMMARY", "TORCHINDUCTOR_CACHE_DIR")}
    for name in saved:
        os.environ.pop(name, None)
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def assert_ends_cleanly(argv: list[str], variables: dict, stdout: str, code: int, stderr: str) -> None:
    state = (argv, variables, stdout)
    assert "Traceback" not in stderr, (state, stderr)
    assert stderr.count("\n") <= 3, (state, stderr)
    assert_well_behaved(argv, code, stderr)


# Command lines that run, so that the environment, not a bad flag, decides how a run ends; drawn half
# the time, odd command lines (as above) the other half.
RUNS = {
    "trainer": [[], ["--sweep"], ["--plot", "plots"], ["--loss", "sobolev", "--plot", "new/plots"],
                ["--basis", "mlp"], ["--outside-no-grad"]],
    "download": [[], ["--force"], ["--dest", "new/data"], ["--timeout", "1"]],
    "bench": [[], ["--rows", "4", "--json", "out.json"], ["--markdown"], ["--rows", "3"]],
    "runner": [[], ["--no-trainer"], ["--only", "backward"]],
}


def programs():
    """name -> (parser to draw flags from, main(argv) through the program's real entry)."""
    from bench import __main__ as bench_cli
    from tensor_features import config, download, train
    from tensor_features.lab import lessons
    from tensor_features.cli import run_main

    return {
        "trainer": (config.build_parser(), lambda argv: run_main(
            lambda: train.main(["--device", "cpu", "--epochs", "20", "--n", "64", *argv]))),
        "download": (download_flags(), lambda argv: run_main(lambda: download.main(argv, source=REFUSED))),
        "bench": (bench_cli.build_parser(), lambda argv: run_main(lambda: bench_cli.main(argv))),
        "runner": (lessons.build_parser(), lambda argv: run_main(lambda: lessons.main(argv))),
    }


@pytest.mark.parametrize("name", ["trainer", "download", "bench", "runner"])
def test_programs_in_any_environment(name, monkeypatch):
    from bench import __main__ as bench_cli
    from tensor_features.lab import lessons

    monkeypatch.setattr(bench_cli, "measure", lambda rows, device, args: [])  # arguments and the end only
    monkeypatch.setattr(lessons, "_run_child", lambda args, summary: (0, 0.0))
    parser, main = programs()[name]
    # --fast compiles (seconds); it is drawn only where its cache folder cannot be written, which stops it first.
    flags = st.one_of(st.sampled_from(RUNS[name]), command_lines(parser, skip={"fast"}))

    @settings(FUZZ, max_examples=5 if name == "trainer" else 8)  # the trainer trains (about a second each)
    @given(flags, st.sampled_from(ENVIRONMENTS), st.sampled_from(STDOUTS))
    def check(argv, variables, stdout):
        if name == "trainer" and "TORCHINDUCTOR_CACHE_DIR" in variables:
            argv = [*argv, "--fast"]
        with scratch_folder(), environment(variables):
            code, stderr = call_main(main, argv, stdout=stdout_for(stdout))
        assert_ends_cleanly(argv, variables, stdout, code, stderr)

    check()


def test_lessons_in_any_environment():
    @settings(FUZZ, max_examples=8)
    @given(st.sampled_from(QUICK_LESSONS), st.sampled_from(ENVIRONMENTS), st.sampled_from(STDOUTS), st.data())
    def check(path, variables, stdout, data):
        argv = ["--device", "cpu", *data.draw(st.one_of(st.just([]), command_lines(load_lesson(path).lab.parser,
                                                                                  skip={"device"})))]
        with scratch_folder(), environment(variables):
            finished = run_in_process(path, argv, stdout=stdout_for(stdout))
        assert_ends_cleanly(argv, variables, stdout, finished.code, finished.stderr)
        if stdout != "open" and finished.code == 1:  # stdout refused: one line when full, none when closed
            assert finished.stderr.count("\n") == (stdout == "full"), finished.stderr

    check()

"""The plumbing every lesson shares: numbering observations, printing the code that ran,
printing each observed value beside its expectation, catching the errors a lesson provokes
on purpose, recording what each check saw, the "Try:" lines, and the exit code.

A lesson does the autograd itself, in plain sight. Its shape:

    lab = Lab.start("05 · backward", __doc__, __name__)

    # %% [1] The original example
    # A comment paragraph says what the cell shows and why, as in PyTorch's tutorials.
    def original_example(lab: Lab) -> None:
        \"\"\"The original example: d/dx (x**2 + 2x) at x = 3.\"\"\"
        x = torch.tensor(3.0, requires_grad=True)  # on lab.device: run() makes it the default
        y = x**2 + 2 * x
        y.backward()
        lab.check(x.grad, 8.0, "dy/dx = 2x + 2 = 8")

    lab.run(original_example)
    ...
    lab.finish(TRIES)

What the learner reads is the code itself: before each check the lab prints the observation's
own source lines, read back from the file (or the notebook cell), from the last printed line to
the end of the current statement. It leaves out the lab's calls and the docstring. A statement
that did not run (a branch not taken, the lines after a provoked error) is printed with
`# not run` after it; a helper defined outside the observation runs without being printed (its
name shows where it is called). A check's label is the source text of the value it checks,
unless the lesson passes label=. So the printed code cannot drift from the code; the labels
given by hand and the "why" texts are sentences like any other, checked by the tests and by
reading.

What the tests read: each check records the value it saw (a snapshot) under its label, and
`lab.run(observation, **kwargs)` returns that record, a Seen, with the observation's local
variables in `.names`. An observation returns nothing; tests call `lab.run` with a lab of
their own and compare what was seen with their own oracles.

One file, three ways to run it:
  * `python lesson.py [flags]`: observations run top to bottom; finish() exits 0, or 1 when
    any observation disagreed (2 for a bad flag, from argparse, or an unwritable LAB_SUMMARY);
    Ctrl-C ends it with one line and exit code 130, a closed or full stdout with exit code 1.
  * a notebook (Jupyter or VS Code, through the `# %%` cells): each cell runs and prints its
    observation and leaves its local variables as globals to inspect, until the next
    observation removes them; finish() prints the count and does not exit the kernel.
  * `import` (tests, the bench): the lab is inert, lab.run() does nothing, and the tests run
    each observation with a lab of their own.

`make mutate` sets LAB_FORCE_AGREE=1, which makes every check count as agreeing, so that only
the tests' own oracles can catch a wrong lesson. LAB_SUMMARY=PATH makes finish() append a
one-line JSON summary to PATH (the `make run` summary reads it).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import inspect
import io
import json
import linecache
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterator, TextIO

import torch

from tensor_features.cli import (OneLineArgumentParser, add_device_argument, cannot_write_into, device_or_exit,
                                 environment_problem, int_in_range, interrupted, missing_folders,
                                 program_name, remove_empty, run_main, say, stdout_failed, whole_file)
from tensor_features.lab.values import format_value

FORCE_AGREE_ENV = "LAB_FORCE_AGREE"
SUMMARY_ENV = "LAB_SUMMARY"
LEFT_WIDTH = 40  # "x.grad = 8" column
LINE_WIDTH = 120  # past this, the expectation goes on its own line
WRAP_WIDTH = 100  # provoked error messages are shown whole, wrapped at this width
LAB_CALLS = {"check", "expect_error", "expect_warning", "note"}
PUBLISHED = "__lab_published__"  # in a lesson's globals: the names the last observation left there


# -- values ----------------------------------------------------------------------------------------

def _as_cpu_tensor(value: Any) -> torch.Tensor:
    """A tensor on the CPU; Python floats become float64, so 0.1 is not first rounded to float32."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    tensor = torch.as_tensor(value)
    return torch.as_tensor(value, dtype=torch.float64) if tensor.is_floating_point() else tensor


def values_match(observed: Any, expected: Any, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
    """Equality for exact things, closeness for floating point, shape-aware for tensors.

    NaN matches NaN (a lesson may expect a NaN gradient); None matches only None.
    """
    if observed is None or expected is None:
        return observed is None and expected is None
    if isinstance(observed, torch.Tensor) or isinstance(expected, torch.Tensor):
        try:
            obs, exp = (_as_cpu_tensor(v) for v in (observed, expected))
        except (TypeError, ValueError, RuntimeError):
            return False
        if obs.shape != exp.shape:
            if not (obs.numel() == 1 and exp.numel() == 1):
                return False
            obs, exp = obs.reshape(()), exp.reshape(())
        if obs.is_floating_point() or exp.is_floating_point():
            return torch.allclose(obs.double(), exp.double(), rtol=rtol, atol=atol, equal_nan=True)
        return torch.equal(obs, exp.to(obs.dtype))
    if isinstance(observed, (list, tuple)) and isinstance(expected, (list, tuple)):
        return len(observed) == len(expected) and all(
            values_match(o, e, rtol=rtol, atol=atol) for o, e in zip(observed, expected)
        )
    if isinstance(observed, bool) or isinstance(expected, bool):
        return type(observed) is type(expected) and observed == expected
    if isinstance(observed, float) or isinstance(expected, float):
        try:
            o, e = float(observed), float(expected)
        except (TypeError, ValueError):
            return False
        if math.isnan(o) or math.isnan(e):
            return math.isnan(o) and math.isnan(e)
        return math.isclose(o, e, rel_tol=rtol, abs_tol=atol)
    return observed == expected


# -- "Try:" lines, as data a test can run ------------------------------------------------------------

@dataclass(frozen=True)
class Try:
    """One thing to try after a lesson, and what it will show, in words.

    Either flags for the command line (``flags="--size 1024"``) or an edit of the lesson's own
    source (``edit=(old, new)``, inside the observation function ``where``, or anywhere in the
    file when where is None; old must occur exactly once there). ``then`` says what happens; a
    Try whose edit makes a check disagree says so ("... the check fails"). The same promise in a
    form a test runs (the exit code, the text the output gains) lives with the lesson's tests:
    tests/lab/test_tries.py runs every Try of every lesson against it.
    """

    then: str
    flags: str = ""
    edit: tuple[str, str] | None = None
    where: Callable[..., Any] | None = None
    needs_cuda: bool = False  # offered only where a GPU is visible

    def text(self, number: int | None = None) -> str:
        if self.edit is not None:
            old, new = (_code_only(part) for part in self.edit)
            change = f"replace `{old}` with `{new}`" if new else f"delete `{old}`"
            place = f"[{number}]" if number is not None else (f"{self.where.__name__}()" if self.where else "")
            what = f"in {place}, {change}" if place else change
            if self.flags:
                what = f"{what}, and run with {self.flags}"
        else:
            what = self.flags
        return f"{what}: {self.then}"

    def bounds(self, source: str) -> tuple[int, int]:
        """Where in source the edit may apply: the function ``where``, or the whole file."""
        if self.where is None:
            return 0, len(source)
        lines = source.splitlines(keepends=True)
        node = next((n for n in ast.parse(source).body
                     if isinstance(n, ast.FunctionDef) and n.name == self.where.__name__), None)
        if node is None:
            raise ValueError(f"no function {self.where.__name__}() in the lesson")
        return sum(len(line) for line in lines[: node.lineno - 1]), sum(len(line) for line in lines[: node.end_lineno])

    def apply(self, source: str) -> str:
        """The lesson's source with this Try's edit made; ValueError if old is not there exactly once."""
        old, new = self.edit
        start, end = self.bounds(source)
        span = source[start:end]
        if span.count(old) != 1:
            raise ValueError(f"{old!r} occurs {span.count(old)} times in {self.where.__name__ if self.where else 'the file'}")
        return source[:start] + span.replace(old, new) + source[end:]


_LAB_FRAME = re.compile(r'  File "[^"]*tensor_features[/\\][^"]*", line \d+, in \S+\n(?:    [^\n]*\n)?')
_BUILD_PATH = re.compile(r'(?:/[^\s/"]+)+/(?=(?:aten/src|c10|torch/csrc)/)')


def tidy_message(message: str) -> str:
    """A provoked error or warning as the learner needs it: without the lab's own frames in a
    traceback (anomaly mode's), and with PyTorch's source paths relative to its repository
    (`/__w/pytorch/pytorch/build/aten/src/...` -> `aten/src/...`: where its build ran)."""
    return _BUILD_PATH.sub("", _LAB_FRAME.sub("", message))


def _code_only(text: str) -> str:
    """An edit as a learner reads it in a Try line: its code, without trailing comments, one line."""
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in text.splitlines()]
    return "; ".join(line for line in lines if line)


# -- the lesson's own source, printed as it runs -----------------------------------------------------

def _is_lab_call(node: ast.AST) -> bool:
    """`lab.something(...)`: the lab's plumbing, which the printed code leaves out."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "lab")


def _own_nodes(function: ast.AST) -> Iterator[ast.AST]:
    """The nodes of a function's body, not descending into functions or classes defined inside it."""
    stack = list(ast.iter_child_nodes(function))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


@dataclass
class _FunctionSource:
    """One function of a lesson: which of its lines are shown, and how far to dedent each."""

    lines: list[str]  # the whole file (or notebook cell), 1-based via lines[n - 1]
    text: str
    node: ast.FunctionDef
    shown: dict[int, int] = field(default_factory=dict)  # line number -> columns to remove
    # The function's own statements (not those of functions defined inside it): first line -> the
    # lines any of which, when traced, means it ran (a decorated def starts at its decorator).
    statements: dict[int, range] = field(default_factory=dict)

    @classmethod
    def parse(cls, lines: list[str], firstlineno: int) -> "_FunctionSource | None":
        text = "".join(lines)
        try:
            tree = ast.parse(text)
        except SyntaxError:
            return None
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if first == firstlineno:
                    source = cls(lines, text, node)
                    source._mark_shown()
                    return source
        return None

    def _mark_shown(self) -> None:
        body = list(self.node.body)
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            body = body[1:]  # the docstring is the observation's title, printed by run()
        if not body:
            return
        base = body[0].col_offset
        hidden: set[int] = set()
        extra: dict[int, int] = {}
        for node in ast.walk(self.node):
            if isinstance(node, (ast.Expr, ast.Assign)) and _is_lab_call(node.value):
                hidden.update(range(node.lineno, node.end_lineno + 1))
            elif isinstance(node, ast.With) and any(_is_lab_call(item.context_expr) for item in node.items):
                # `with lab.expect_error(...):` is plumbing; its body is the lesson, one level less deep.
                hidden.update(range(node.lineno, node.body[0].lineno))
                shift = node.body[0].col_offset - node.col_offset
                for line in range(node.body[0].lineno, node.end_lineno + 1):
                    extra[line] = extra.get(line, 0) + shift
        for node in _own_nodes(self.node):
            if isinstance(node, ast.stmt):
                first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
                self.statements[node.lineno] = range(first, node.lineno + 1)
        start = body[0].lineno
        # Comments directly above the first statement belong to it.
        while start - 1 > self.node.body[0].end_lineno and self.lines[start - 2].strip().startswith("#"):
            start -= 1
        for number in range(start, self.node.end_lineno + 1):
            line = self.lines[number - 1] if number - 1 < len(self.lines) else ""
            if number in hidden or not line.strip():
                continue
            self.shown[number] = base + extra.get(number, 0)

    def with_end(self, line: int) -> int:
        """The last line of the `with` statement that starts at `line` (`line` if there is none)."""
        for node in _own_nodes(self.node):
            if isinstance(node, ast.With) and node.lineno == line:
                return node.end_lineno
        return line

    def statement_end(self, line: int) -> int:
        """The last line of the top-level statement of this function that contains `line`."""
        for node in self.node.body:
            if node.lineno <= line <= node.end_lineno:
                return node.end_lineno
        return line

    def lab_call_argument(self, line: int, method: str) -> str | None:
        """Source text of the first argument of the `lab.<method>(...)` call spanning `line`."""
        for node in ast.walk(self.node):
            if (_is_lab_call(node) and node.func.attr == method and node.lineno <= line <= node.end_lineno
                    and node.args):
                segment = ast.get_source_segment(self.text, node.args[0])
                return " ".join(segment.split()) if segment else None
        return None

    def render(self, first: int, last: int, ran: set[int] | None = None, before: float = math.inf) -> list[str]:
        """Lines first..last as shown; with `ran` (the traced line numbers), a statement that
        starts before line `before` and never ran is marked. Later ones may still run."""
        out = []
        for number in range(first, last + 1):
            if number in self.shown:
                line = self.lines[number - 1].rstrip("\n")
                text = line[self.shown[number]:] if line[: self.shown[number]].strip() == "" else line.strip()
                lines = self.statements.get(number)
                if ran is not None and lines is not None and number < before and not ran.intersection(lines):
                    text += "  # not run"
                out.append(text)
        return out


_SOURCES: dict[tuple[str, int, int], _FunctionSource | None] = {}
_PLUMBING_FILES = {__file__, __import__("contextlib").__file__}


def _lesson_frame() -> FrameType | None:
    """The innermost frame outside this module and contextlib: the lesson's code."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename in _PLUMBING_FILES:
        frame = frame.f_back
    return frame


def _source_of(frame: FrameType) -> _FunctionSource | None:
    code = frame.f_code
    lines = linecache.getlines(code.co_filename, frame.f_globals)
    if not lines:
        return None
    key = (code.co_filename, code.co_firstlineno, hash("".join(lines)))
    if key not in _SOURCES:
        _SOURCES[key] = _FunctionSource.parse(lines, code.co_firstlineno)
    return _SOURCES[key]


def _may_skip_lines(function: Callable[..., Any]) -> bool:
    """Whether a statement of the function might not run: a branch, a try, a while, an early exit,
    or a `with lab.expect_...` block (the error ends it early). Only such functions are traced
    line by line (a `for` body that runs zero times is not marked); the others only for their
    return, and fastest_seconds times with no trace at all."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return False
    branching = (ast.If, ast.Try, ast.While, ast.Break, ast.Continue, ast.Raise, ast.Match)
    return any(isinstance(node, branching) or (isinstance(node, ast.With) and any(
        _is_lab_call(item.context_expr) for item in node.items)) for node in _own_nodes(tree.body[0]))


class _Trace:
    """One observation's run, watched through sys.settrace for that code object only: its local
    variables when it returns (what a notebook leaves for the learner), and, with lines=True,
    the line numbers that ran (what `# not run` marks). Other frames run untraced.

    Inactive, and so recording nothing, when a debugger or coverage tool already traces.
    """

    def __init__(self, code, lines: bool = True) -> None:
        self.code, self.trace_lines, self.active = code, lines, False
        self.lines: set[int] = set()
        self.locals: dict[str, Any] = {}

    @property
    def ran(self) -> set[int] | None:
        """The traced line numbers, or None when lines were not traced (nothing to mark)."""
        return self.lines if self.active and self.trace_lines else None

    def _global(self, frame, event, arg):
        if frame.f_code is not self.code:
            return None
        frame.f_trace_lines = self.trace_lines
        return self._local

    def _local(self, frame, event, arg):
        if event == "line":
            self.lines.add(frame.f_lineno)
        elif event == "return" and frame.f_code is self.code:
            self.locals = dict(frame.f_locals)
        return self._local

    def __enter__(self) -> "_Trace":
        # Another lab's trace (an observation running another lab's observation, as 09's ranks
        # do) is set aside and put back; a debugger's or a coverage tool's is left alone.
        self.previous = sys.gettrace()
        self.active = self.previous is None or isinstance(getattr(self.previous, "__self__", None),
                                                          _Trace)
        if self.active:
            sys.settrace(self._global)
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            sys.settrace(self.previous)


def snapshot(value: Any) -> Any:
    """The value as a check saw it: a tensor is copied (detached), so that a later in-place change
    (x.grad.zero_()) does not rewrite what was seen; lists and tuples are copied through."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, BaseException):
        # Its message and type are what was seen; its traceback would keep the observation's
        # frame, and every tensor or model in it, alive until the garbage collector runs.
        return value.with_traceback(None)
    if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        copied = [snapshot(v) for v in value]
        return copied if isinstance(value, list) else type(value)(copied) if not hasattr(value, "_fields") \
            else type(value)(*copied)
    return value


@dataclass(frozen=True, eq=False)
class Expectation:
    """What a check compared its observed value with, and how close counted as agreeing. (No ==:
    the value may be a tensor; compare .value, .rtol and .atol.)"""

    value: Any
    rtol: float
    atol: float


class Seen(dict):
    """What one observation recorded, for the tests and the curious: each check's observed value
    under its label (the source text of what it checked, or label=), as the check saw it; when a
    label repeats, the last one (every(label) gives them all, in order). Provoked errors are under
    "error", caught warnings under "warnings" (or their label=). `expected[label]` is the last
    check's Expectation under that label: a test compares it with its own oracle too, so that a
    lesson whose expected value is wrong is caught even where its check agreed (make mutate
    forces every check to agree). `names` holds the observation's local variables as they were
    when it returned."""

    def __init__(self) -> None:
        super().__init__()
        self._every: dict[str, list[Any]] = {}
        self.expected: dict[str, Expectation] = {}
        self.names: dict[str, Any] = {}

    def add(self, label: str, value: Any) -> None:
        value = snapshot(value)
        self[label] = value
        self._every.setdefault(label, []).append(value)

    def every(self, label: str) -> list[Any]:
        """Every value recorded under label, in the order the checks ran ([] if none)."""
        return list(self._every.get(label, []))


# -- the lab -------------------------------------------------------------------------------------------

@dataclass
class Caught:
    """What a provoked error or warning turned out to be (filled in when the block ends)."""

    error: BaseException | None = None
    warnings: list[str] = field(default_factory=list)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (Jupyter itself, VS Code's interactive window)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class Lab:
    """Numbers the observations, prints the code that ran and each check beside its expectation."""

    def __init__(self, title: str, device: torch.device | str = "cpu", stream: TextIO | None = None,
                 live: bool = True):
        self.title = title
        self.device = torch.device(device)
        self.stream = stream if stream is not None else sys.stdout
        self.live = live  # False when the lesson was imported: run() and finish() do nothing
        self.observation = 0
        self.passed = 0
        self.failed: list[str] = []
        self.order: dict[str, int] = {}  # observation function name -> its number
        self.args: argparse.Namespace = argparse.Namespace()
        self.force_agree = os.environ.get(FORCE_AGREE_ENV) == "1"
        self._started = time.perf_counter()
        self._cursor: tuple[FrameType, _FunctionSource, int] | None = None  # frame, source, next line
        self._ran: _Trace | None = None  # the running observation: which lines ran, its locals
        self.seen = Seen()  # what the last observation's checks saw (see Seen)
        self.publish = False  # Lab.start sets it when live: each observation's locals become globals
        self._hinted: set[str] = set()  # helpers whose definition a printed line has pointed to
        self.prog = program_name()  # for the one-line messages on stderr
        self._stopped = False  # after Ctrl-C or a failed write to stdout: print nothing more
        self._pictures = 0  # graph pictures written with --graphs, for their file names
        self._print(f"{title:<44} torch {torch.__version__} · device {self.device}")

    @classmethod
    def start(
        cls,
        title: str,
        description: str | None,
        module_name: str,
        add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
        argv: list[str] | None = None,
    ) -> "Lab":
        """The lab of a lesson module; pass the module's ``__name__``.

        Run as a script or in a notebook (``__name__ == "__main__"``), it parses the command
        line (a notebook gets the defaults) and prints. Imported, it is inert and silent, with
        the default flags in ``lab.args``.
        """
        prog = Path(sys.argv[0]).name if module_name == "__main__" and not in_notebook() else None
        parser = OneLineArgumentParser(prog=prog, description=description,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
        add_device_argument(parser)
        if add_arguments is not None:
            add_arguments(parser)
        parser.add_argument("--graphs", metavar="DIR",
                            help="also draw each graph the lesson shows (lab.graph; "
                            "lab.graph_diff: two readings side by side) as an SVG picture in DIR "
                            "(created if needed), named LESSON-OBSERVATION-K.svg, K counting the "
                            "pictures of this run")
        parser.add_argument("--tries", action="store_true", help="list this lesson's Try lines and stop")
        parser.add_argument("--try", dest="try_number", type=int_in_range(1), metavar="N",
                            help="run Try N on a temporary copy of this lesson: prints the edit as a diff, "
                            "runs the copy, leaves this file untouched")
        live = module_name == "__main__"
        if not live or in_notebook():
            argv = [] if argv is None else argv  # the kernel's own argv is not ours
        args = parser.parse_args(argv)
        if live and not in_notebook() and (args.tries or args.try_number is not None):
            from tensor_features.lab import tries

            lesson = Path(sys._getframe(1).f_globals["__file__"])
            given = sys.argv[1:] if argv is None else argv
            # run_main: a full or closed stdout, Ctrl-C, end in one line here too (see cli.run_main)
            parser.exit(run_main(lambda: tries.list_tries(lesson) if args.tries
                                 else tries.run_try(lesson, args.try_number, given, parser.prog)))
        if live:
            device = device_or_exit(parser, args.device)
            problem = environment_problem()  # an unwritable LAB_SUMMARY: say so now, not after the lesson
            if problem and not in_notebook():
                parser.exit(2, f"{parser.prog}: error: {problem}\n")
            unwritable = args.graphs is not None and cannot_write_into(args.graphs)
            if unwritable:  # now, in one line, not after the lesson has run
                parser.error(f"argument --graphs: {args.graphs!r}: {unwritable}")
            lab = None

            def stop(signum: int, frame: FrameType | None) -> None:  # from the title line on: see _interrupted
                if lab is None:
                    raise SystemExit(interrupted(parser.prog))
                lab._interrupted(signum, frame)

            if not in_notebook():  # a kernel keeps its own Ctrl-C: it interrupts the cell
                with contextlib.suppress(ValueError):  # ValueError: not the main thread
                    signal.signal(signal.SIGINT, stop)
            lab = cls(title, device)
            lab.prog = parser.prog
            lab.publish = True
            if in_notebook() and lab.device.type != "cpu":
                torch.set_default_device(lab.device)  # a cell the learner adds makes tensors there too
        else:
            lab = cls(title, "cpu", stream=io.StringIO(), live=False)
        lab.args = args
        lab.parser = parser  # the fuzz test draws command lines from its flags
        return lab

    # -- printing -------------------------------------------------------------------------------

    def _print(self, text: str = "") -> None:
        if self._stopped:
            return
        try:
            print(text, file=self.stream)
        except OSError as err:  # `| head` (the reader has gone: quietly), a full disk or /dev/full (one line)
            self._stopped = True
            raise SystemExit(stdout_failed(err, self.prog)) from None

    def _interrupted(self, signum: int, frame: FrameType | None) -> None:
        """SIGINT (Ctrl-C) in a lesson run as a script: one line on stderr and exit code 130.

        A lesson has no main() to wrap, so this raises SystemExit rather than KeyboardInterrupt: it
        unwinds the lesson (finally, with) like any exception and ends without a traceback. What the
        unwinding would still print (the rest of the observation's code) stays unprinted.
        """
        self._stopped = True
        raise SystemExit(interrupted(self.prog))

    def run(self, observation: Callable[..., Any], *args: Any, **kwargs: Any) -> Seen | None:
        """Number and title the observation (its docstring's first line), run it on the lab's
        device (the default device of every tensor it makes), and return what its checks saw.

        Run from a lesson (``publish``), the observation's local variables then become the
        module's globals, so that in a notebook the learner can inspect them after the cell has
        run; the next observation removes them first, so it cannot use them by accident. A name
        the module already has (an import, a helper, ``lab``, a value the learner bound) is left
        alone, and so is a published name the learner has since bound to something else.
        It then returns None (lab.seen holds what the checks saw), so that a notebook cell ending
        in lab.run(...) shows the observation, not that record echoed after it.
        """
        if not self.live:
            return None
        function = inspect.unwrap(observation)
        if self.publish:
            self._forget_published(getattr(function, "__globals__", {}))
        self.observation += 1
        self.order[observation.__name__] = self.observation
        title = (observation.__doc__ or observation.__name__).strip().splitlines()[0]
        self._print(f"\n[{self.observation}] {title}")
        self._cursor = None
        self.seen = Seen()
        # A decorated observation (09's on_every_rank, which runs it on every rank with a lab of
        # each rank's own) leaves in seen.names what the decorator put there: rank 0's variables,
        # as they travelled. Its globals are those of the lesson that wrote it.
        self._ran = _Trace(observation.__code__, lines=_may_skip_lines(observation))
        try:
            with self._ran, self.on_device():
                observation(self, *args, **kwargs)
        finally:
            self._flush_code(to_end=True)
            if function is observation:
                # Not the lab itself: lab -> seen -> names -> lab would be a reference cycle, which
                # keeps everything the observation made (a DDP model, its process group) alive
                # until the garbage collector happens to run.
                self.seen.names = {name: value for name, value in self._ran.locals.items()
                                   if value is not self}
            self._ran = None
            self._cursor = None
            if self.publish:
                self._publish(getattr(function, "__globals__", {}), self.seen.names)
        return None if self.publish else self.seen

    def on_device(self) -> contextlib.AbstractContextManager:
        """The lab's device as the default for new tensors (torch.device as a context manager).
        Nothing to change when the default already is the CPU and so is the lab's; a CPU lab
        inside another lab's GPU observation (09's ranks on gloo) does set the CPU."""
        if self.device.type == "cpu" and torch.get_default_device().type == "cpu":
            return contextlib.nullcontext()
        return torch.device(self.device)

    def _publish(self, namespace: dict[str, Any], names: dict[str, Any]) -> None:
        put = {name: value for name, value in names.items()
               if name != "lab" and not name.startswith("_") and name not in namespace}
        namespace.update(put)
        # Kept in the namespace, not in this lab: a lab made again (a notebook's setup cell run
        # twice) still finds what an earlier one put there.
        namespace[PUBLISHED] = put

    @staticmethod
    def _forget_published(namespace: dict[str, Any]) -> None:
        for name, value in namespace.pop(PUBLISHED, {}).items():
            if namespace.get(name) is value:  # still what was put there, not the learner's own
                del namespace[name]

    def _flush_code(self, frame: FrameType | None = None, to_end: bool = False,
                    block: str | None = None) -> _FunctionSource | None:
        """Print the lesson lines that ran since the last printed line, up to the current statement.

        block="opens": a `with lab.expect_...` block is about to run: print up to its first line
        only; block="closed": it has run: print it through its end, marking what did not run.
        """
        ran = self._ran.ran if self._ran is not None else None
        if to_end:
            if self._cursor is not None:
                _, source, next_line = self._cursor
                self._print_code(source.render(next_line, source.node.end_lineno, ran))
            return None
        if frame is None:
            return None
        source = _source_of(frame)
        if source is None:
            return None
        if self._cursor is None or self._cursor[0] is not frame:
            self._cursor = (frame, source, source.node.lineno)
        _, _, next_line = self._cursor
        last, before = source.statement_end(frame.f_lineno), frame.f_lineno
        if block == "opens":
            last = frame.f_lineno
        elif block == "closed":
            last = max(source.with_end(frame.f_lineno), frame.f_lineno)
            before = last + 1
        if last >= next_line:
            ran = ran if frame.f_code is getattr(self._ran, "code", None) else None
            lines = source.render(next_line, last, ran, before=before)
            self._print_code([self._hint_helpers(line, frame) for line in lines])
            self._cursor = (frame, source, last + 1)
        return source

    def _hint_helpers(self, line: str, frame: FrameType) -> str:
        """On a helper's first call, say where it is defined: this file's line, or the package."""
        hints = []
        for name in re.findall(r"(?<![\w.])([A-Za-z_]\w*)\(", line.split("  #")[0]):
            helper = frame.f_globals.get(name)
            if name in self._hinted or not (inspect.isfunction(helper) or inspect.isclass(helper)):
                continue
            module = getattr(helper, "__module__", "") or ""
            if module == frame.f_globals.get("__name__"):
                try:
                    where = f"defined in this file, line {inspect.getsourcelines(helper)[1]}"
                except (OSError, TypeError):
                    continue
            elif module.startswith("tensor_features."):
                where = f"from {module}"
            else:
                continue
            self._hinted.add(name)
            hints.append(f"{name}: {where}")
        if not hints:
            return line
        return line + (" · " if "  #" in line else "  # ") + " · ".join(hints)

    def _print_code(self, lines: list[str]) -> None:
        for line in lines:
            self._print(f"    {line}")

    def write(self, text: str) -> None:
        """Text rendered elsewhere (another process's lab), printed as it is."""
        for line in text.splitlines():
            self._print(line)

    def graph(self, output: Any, names: dict[str, Any] | None = None) -> Any:
        """Show the real graph behind output (tensor_features/lab/graph.py): its text tree under the
        current observation; in a notebook, the picture too; with --graphs DIR, the picture also
        written to DIR/LESSON-OBSERVATION-K.svg (K counts this run's pictures; whole or not at
        all; only when the lesson runs as a program or in a notebook). Without the graphviz-pure
        program the picture is one line saying how to get it. output is a tensor (its autograd
        graph, read_graph) or a micrograd-style Value with .parents (the engine's own graph,
        read_engine). Returns the reading."""
        from tensor_features.lab.graph import read_engine, read_graph

        engine = not isinstance(output, torch.Tensor) and hasattr(output, "parents")
        reading = read_engine(output, names) if engine else read_graph(output, names)
        self.seen.add("graph", reading.text())
        self.note(reading.text())
        self._show_picture(reading.svg)
        return reading

    def graph_diff(self, before: Any, after: Any) -> Any:
        """Show what changed between two readings of a graph (lab.graph's or read_graph's): one
        line per change under the current observation, and the two readings side by side in a
        picture, the changes marked, where lab.graph shows its picture. Returns the GraphDiff."""
        from tensor_features.lab.graph import diff, diff_svg

        changes = diff(before, after)
        self.seen.add("graph diff", changes.text())
        self.note(changes.text())
        self._show_picture(lambda: diff_svg(before, after))
        return changes

    def _show_picture(self, draw: Callable[[], str]) -> None:
        """Draw an SVG picture (draw()) in a notebook, and with --graphs DIR into
        DIR/LESSON-OBSERVATION-K.svg; a renderer that is missing or fails is one note line."""
        from tensor_features.lab.graph import RendererMissing

        folder = getattr(self.args, "graphs", None)
        if not self.live or (folder is None and not in_notebook()):
            return
        try:
            svg = draw()
        except RendererMissing as missing:
            self.note(f"(no picture: {missing})")
            return
        except (RuntimeError, OSError, subprocess.SubprocessError) as failed:  # it ran and failed
            self.note(f"(no picture: {' '.join(str(failed).split())})")
            return
        if in_notebook():
            from IPython.display import SVG, display

            display(SVG(svg))
        if folder is not None:
            self._pictures += 1
            path = Path(folder) / f"{Path(self.prog).stem}-{self.observation}-{self._pictures}.svg"
            created = missing_folders(path.parent)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with whole_file(path) as partial:
                    partial.write_text(svg, encoding="utf-8")
            except OSError as err:  # the folder was writable at the start; a disk can fill up
                remove_empty(created)
                self.note(f"(no picture: {path} cannot be written: {err.strerror or err})")
                return
            self.note(f"picture: {path}")

    def note(self, text: str) -> None:
        """An explanation, indented under the current observation."""
        self._flush_code(_lesson_frame())
        for line in text.strip("\n").splitlines():
            self._print(f"      {line}")

    def _record(self, ok: bool, left: str, expected: str, why: str, details: list[str] = ()) -> bool:
        ok = ok or self.force_agree
        mark = "  ok" if ok else "FAIL"
        right = f"expected {expected}" + (f"  — {why}" if why else "")
        line = f"{mark}  {left:<{LEFT_WIDTH}} {right}"
        if details or len(line) > LINE_WIDTH:
            self._print(f"{mark}  {left}")
            for detail in details:
                self._print(" " * (len(mark) + 2) + detail)
            self._print(" " * (len(mark) + 2) + right)
        else:
            self._print(line)
        if ok:
            self.passed += 1
        else:
            self.failed.append(f"[{self.observation}] {left}")
        return ok

    def record(self, ok: bool, label: str, expected: str, why: str = "", details: list[str] = ()) -> bool:
        """Count a check decided elsewhere (another process, say): print `label` beside `expected`.

        Unlike check(), it prints no lesson code: the caller is plumbing, not the lesson.
        """
        return self._record(ok, label, expected, why, details=list(details))

    # -- the checks -----------------------------------------------------------------------------

    def check(self, observed: Any, expected: Any, why: str = "", *, label: str | None = None,
              rtol: float = 1e-5, atol: float = 1e-6) -> bool:
        """Print ``<source of observed> = value`` beside ``expected (why)``; count whether they agree."""
        frame = _lesson_frame()
        source = self._flush_code(frame)
        if label is None and source is not None and frame is not None:
            label = source.lab_call_argument(frame.f_lineno, "check")
        self.seen.add(label or "value", observed)
        self.seen.expected[label or "value"] = Expectation(snapshot(expected), rtol, atol)
        ok = values_match(observed, expected, rtol=rtol, atol=atol)
        shown = format_value(expected)
        if ok and not values_match(observed, expected, rtol=0.0, atol=0.0):
            # Close, not equal: say how close counts, so that "ok" never hides a tolerance.
            shown += f" (±{atol:g} + {rtol:g}·|expected|)"
        return self._record(ok, f"{label or 'value'} = {format_value(observed)}", shown, why)

    @contextmanager
    def expect_error(self, match: str, why: str,
                     error_type: type[BaseException] | tuple[type[BaseException], ...] = RuntimeError,
                     *, label: str = "error") -> Iterator[Caught]:
        """Run a block that should raise ``error_type`` whose message contains ``match``.

        The error is caught and shown whole (wrapped), never as a traceback. A block that does
        not raise, or raises something else, is a disagreement like any other.
        """
        frame = _lesson_frame()
        self._flush_code(frame, block="opens")
        caught = Caught()
        try:
            yield caught
        except Exception as err:  # noqa: BLE001 - any surprise is reported, not raised
            caught.error = err
        self._flush_code(frame, block="closed")
        err = caught.error
        self.seen.add(label, err)
        ok = isinstance(err, error_type) and match in str(err)
        if err is None:
            self._record(False, "no error", f'"{match}"', why)
            return
        message = textwrap.wrap(f"{type(err).__name__}: {' '.join(tidy_message(str(err)).split())}", WRAP_WIDTH)
        self._record(ok, message[0], f'"{match}"', why, details=message[1:])

    @contextmanager
    def expect_warning(self, match: str, why: str, *, label: str = "warnings") -> Iterator[Caught]:
        """Run a block that should warn with a message containing ``match``; show the warning whole."""
        frame = _lesson_frame()
        self._flush_code(frame, block="opens")
        caught = Caught()
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            yield caught
        self._flush_code(frame, block="closed")
        caught.warnings = [" ".join(str(r.message).split()) for r in records]
        self.seen.add(label, caught.warnings)
        hits = [i for i, w in enumerate(caught.warnings) if match in w]
        shown = (" ".join(tidy_message(str(records[(hits or [0])[0]].message)).split()) if records
                 else "no warning")
        message = textwrap.wrap(f"warning: {shown}", WRAP_WIDTH)
        self._record(bool(hits), message[0], f'"{match}"', why, details=message[1:])

    # -- the end --------------------------------------------------------------------------------

    def try_lines(self, tries: list[Try]) -> list[str]:
        """The Try lines to print, numbered as --try N takes them: CUDA ones only where a GPU is
        visible and unused; edits by [n]."""
        return [f"Try {number}: " + t.text(self.order.get(t.where.__name__) if t.where else None)
                for number, t in enumerate(tries, 1)
                if not (t.needs_cuda and (not torch.cuda.is_available() or self.device.type == "cuda"))]

    def finish(self, tries: list[Try] = ()) -> int | None:
        """Print the count and the Try lines. As a script, exit (1 if anything disagreed)."""
        if not self.live:
            return None
        self._flush_code(to_end=True)
        total = self.passed + len(self.failed)
        seconds = time.perf_counter() - self._started
        self._print()
        if self.failed:
            self._print(f"{self.passed}/{total} checks match; these do not:")
            for failure in self.failed:
                self._print(f"  {failure}")
        else:
            self._print(f"{self.passed}/{total} checks match across {self.observation} observations.")
        lines = self.try_lines(list(tries))
        for line in lines:
            self._print(line)
        if lines and not in_notebook():
            self._print(f"(python {Path(sys.argv[0]).name} --try N makes Try N's edit in a copy and runs it; "
                        "this file stays as it is)")
        code = 1 if self.failed else 0
        summary = os.environ.get(SUMMARY_ENV)
        if summary:
            try:
                with open(summary, "a", encoding="utf-8") as out:
                    out.write(json.dumps({"title": self.title, "passed": self.passed, "total": total,
                                          "seconds": round(seconds, 2), "device": str(self.device)}) + "\n")
            except OSError as err:  # checked at the start, but a disk can fill up (or it is /dev/full)
                say(f"{self.prog}: error: {SUMMARY_ENV}={summary} cannot be written ({err.strerror})")
                code = code or 2  # as when Lab.start finds it unwritable; a failed check keeps its 1
        if in_notebook():
            return None
        try:
            self.stream.flush()
        except OSError as err:  # the last lines did not fit either
            code = stdout_failed(err, self.prog)
        sys.exit(code)


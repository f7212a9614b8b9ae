"""Command-line plumbing shared by every program in the lab: an argument parser whose errors
are one line, the argparse value types, the checks of files, folders and environment settings
a program will write to (made before any work), the end of a program whatever the environment
does to it (run_main: Ctrl-C, stdout closed or full, memory exhausted), and the --device choice.

Every number a flag accepts is parsed by one of the types here, so "what counts as a valid
--lr" is decided in one place, and the one-line message names the bad value and the range.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import math
import os
import re
import signal
import sys
import tempfile
from pathlib import Path

import torch

# The device is resolved in ranks.py, one place for the lessons, the trainer and their ranks;
# bench and config import these two from here.
from tensor_features.ranks import DEVICE_CHOICES, pick_device  # noqa: F401


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad value ends in one line on stderr and exit code 2.

    The default prints the whole usage block first; for a learner the one line that
    names the bad value and what is allowed is the useful part.
    """

    def error(self, message: str) -> None:  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")

    def parse_args(self, args=None, namespace=None):  # noqa: D102 - argparse's, with blank stray words shown
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:  # argparse joins them with spaces: an empty or blank word would not show at all
            self.error("unrecognized arguments: " + " ".join(word if word.strip() else repr(word) for word in extras))
        return parsed

    def _print_message(self, message: str, file=None) -> None:
        """argparse's, except that a stdout refusing --help (full, closed) ends the program as run_main
        would (one line, exit code 1) where argparse would pass over it and exit 0."""
        if not message:
            return
        file = file or sys.stderr
        try:
            file.write(message)
            if file is sys.stdout:
                file.flush()  # now: a full disk shows here, not in the interpreter's last flush
        except OSError as error:
            if file is sys.stdout:
                raise SystemExit(stdout_failed(error, self.prog)) from None
            # stderr refuses: argparse passes over it, and so does this

    def exit(self, status: int = 0, message: str | None = None):  # noqa: D102 - argparse's hook
        if stdout_error():  # a usage error after output that stdout refuses: the error line is enough
            _silence_stdout()
        super().exit(status, message)


# -- value types: each returns the parsed value or raises ArgumentTypeError with one line ----------

def int_in_range(low: int, high: int | None = None):
    """An integer in [low, high] (no upper bound when high is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            allowed = f"{low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"{value} is out of range (allowed: {allowed})")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def float_in_range(low: float, high: float = math.inf, low_inclusive: bool = True):
    """A finite float in [low, high] ((low, high] when low_inclusive is False)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        above = value >= low if low_inclusive else value > low
        if not math.isfinite(value) or not above or value > high:
            bound = ">=" if low_inclusive else ">"
            upper = f" and <= {high:g}" if math.isfinite(high) else ""
            raise argparse.ArgumentTypeError(f"{text} is not allowed (a finite number {bound} {low:g}{upper})")
        return value

    parse.__name__ = "number"
    return parse


positive_float = float_in_range(0.0, low_inclusive=False)
non_negative_float = float_in_range(0.0)


def learning_rate(text: str) -> float | str:
    """'auto' or a finite float in (0, 1e6]: a step beyond that only overflows float32 at once."""
    return "auto" if text == "auto" else float_in_range(0.0, 1e6, low_inclusive=False)(text)


learning_rate.__name__ = "learning rate"


def new_file(suffixes: tuple[str, ...]):
    """A file the program will write: a name ending in one of suffixes, in a folder that exists,
    where a file can be created. Checked before any work starts; nothing is left behind."""

    def parse(text: str) -> Path:
        path = Path(text)
        if not text.strip():
            raise argparse.ArgumentTypeError(f"an empty name; give a file name ending in {'/'.join(suffixes)}")
        if path.is_dir() or text.endswith(("/", "\\")):
            raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file name ending in {'/'.join(suffixes)}")
        if path.suffix.lower() not in suffixes or path.name.lower() in suffixes:
            raise argparse.ArgumentTypeError(f"{text!r} must be a file name ending in {'/'.join(suffixes)}")
        if not path.parent.is_dir():  # Path("cats.png").parent is Path("."), the working directory
            raise argparse.ArgumentTypeError(f"{text!r}: there is no folder {str(path.parent)!r} to write it into")
        problem = cannot_append(path)
        if problem:
            raise argparse.ArgumentTypeError(f"{text!r} cannot be written: {problem}")
        return path

    parse.__name__ = "file path"
    return parse


# -- files and folders a program writes: checked before the work, whole or absent after it ---------------

def cannot_append(path: str | os.PathLike) -> str | None:
    """Why a file cannot be appended to (its reason, e.g. 'Not a directory'), or None if it can.

    The one sure test of "writable" (permissions, read-only disks, /proc, a path under a file; root
    ignores modes but not these): open it to append. A file that was not there is removed again.
    """
    path = Path(path)
    existed = path.exists()
    try:
        with open(path, "ab"):
            pass
    except OSError as err:
        return err.strerror or str(err)
    if not existed:
        path.unlink()  # leave nothing behind until the program writes it
    return None


def cannot_write_into(folder: str | os.PathLike) -> str | None:
    """Why no file can be made in folder (creating it, as the program will), or None if one can.

    The folders this check creates are removed again: a run that stops before writing leaves none.
    """
    folder = Path(folder)
    created = missing_folders(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return err.strerror or str(err)
    finally:
        remove_empty(created)
    return None


def missing_folders(folder: str | os.PathLike) -> list[Path]:
    """folder and those of its parents that do not exist yet, deepest first: what mkdir(parents=True) makes."""
    folder = Path(folder)
    return [f for f in (folder, *folder.parents) if not f.exists() and f != Path(f.anchor or ".")]


def remove_empty(folders: list[Path]) -> None:
    """Remove the folders, deepest first, while they are empty (a folder that holds a file stays)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


@contextlib.contextmanager
def whole_file(path: str | os.PathLike):
    """Yield a temporary name beside path; when the block ends normally it becomes path, at once.

    An error or Ctrl-C inside the block removes the temporary file: path is never left half written.
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.part")
    try:
        yield partial
        partial.replace(path)
    finally:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)


SUMMARY_ENV = "LAB_SUMMARY"  # make run's runner sets it: each program appends one JSON line there
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # where torch.compile keeps what it compiled


def environment_problem(compiles: bool = False) -> str | None:
    """An environment setting this program will need and cannot use, in one line; None if all is well.

    LAB_SUMMARY must name a file that can be appended to; with compiles (torch.compile will run),
    TORCHINDUCTOR_CACHE_DIR, when set, a folder that can be written into. Checked before any work.
    """
    summary = os.environ.get(SUMMARY_ENV)
    if summary:
        problem = cannot_append(summary)
        if problem:
            return f"{SUMMARY_ENV}={summary} cannot be written ({problem}); unset it or name a file in a writable folder"
    cache = os.environ.get(INDUCTOR_CACHE_ENV)
    if compiles and cache:
        problem = cannot_write_into(cache)
        if problem:
            return (f"{INDUCTOR_CACHE_ENV}={cache} cannot be written ({problem}); torch.compile keeps its code "
                    "there: unset it or name a writable folder")
    return None


# -- the end of a program ------------------------------------------------------------------------------
#
# "No traceback, whatever the environment": every program ends in one line and an exit code.
#   Ctrl-C (SIGINT)           "PROG: interrupted" on stderr, exit code 130 (128 + SIGINT, what a shell
#                             shows for Ctrl-C). The program exits with 130 rather than re-raising the
#                             signal, so that a shell, subprocess and `make run` all read 130. What it
#                             was writing is removed by its own cleanup, which a second Ctrl-C cannot cut.
#   stdout closed (| head)    nothing more (the reader has gone), exit code 1
#   stdout full or failing    "PROG: error: cannot write the output: No space left on device", exit 1
#   memory exhausted          "PROG: error: out of memory: an allocation of 4.2 GB failed ...", exit 1
#   any other OSError         "PROG: error: <reason>: <file>", exit 1
# run_main gives a program's main() all of this. A lesson has no main(): its top level is the program,
# so Lab.start installs the Ctrl-C handler (one line, SystemExit(130)) and the lab's printing handles stdout.

INTERRUPTED = 130
OUT_OF_MEMORY = ("can't allocate memory", "not enough memory", "out of memory")


def program_name() -> str:
    """How the running program was started, for its one-line messages: 'python -m pkg.mod' or 'lesson.py'."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return "python -m " + spec.name.removesuffix(".__main__")
    if not sys.argv or sys.argv[0] in ("", "-c"):
        return "python -c" if sys.argv else "python"
    return Path(sys.argv[0]).name


def say(line: str) -> None:
    """One line on stderr, even from a signal handler that interrupted a write to stderr."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, RuntimeError, ValueError):  # RuntimeError: a reentrant call into stderr's buffer
        with contextlib.suppress(OSError):  # no stderr either: the exit code is all that is left
            os.write(2, (line + "\n").encode(errors="replace"))


def _silence_stdout() -> None:
    """Point stdout at devnull, so that the interpreter's final flush cannot fail a second time."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):  # a stand-in stream (tests, notebooks)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - kept until the interpreter exits
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, descriptor)
    os.close(devnull)


def stdout_closed() -> int:
    """What a program does when its reader went away (`... | head`): stop quietly, exit code 1.

    The recipe of Python's signal module docs ("Note on SIGPIPE"): point stdout at devnull so that
    the interpreter's final flush cannot raise a second time.
    """
    _silence_stdout()
    return 1


def stdout_failed(error: OSError, prog: str | None = None) -> int:
    """stdout takes no more (a closed pipe, a full disk, /dev/full): stop with exit code 1.

    A closed pipe ends quietly, as `| head` expects; any other failure is one line on stderr.
    """
    if isinstance(error, BrokenPipeError):
        return stdout_closed()
    _silence_stdout()
    say(f"{prog or program_name()}: error: cannot write the output: {error.strerror or error}")
    return 1


def stdout_error() -> OSError | None:
    """Why stdout cannot take what it holds (a full disk, a closed pipe): flushing it fails; None if it can."""
    try:
        sys.stdout.flush()
    except OSError as error:
        return error
    except (AttributeError, ValueError):  # no stdout, or a closed one: nothing is waiting in it
        pass
    return None


def _lost_write(error: OSError) -> bool:
    """A write that failed with no file named: the program's own files say which they are (each is
    written where its failure is turned into a line naming it), so this was its output, stdout.
    (A failed write empties stdout's buffer, so flushing it again cannot tell.)"""
    return error.filename is None and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)


def interrupted(prog: str | None = None) -> int:
    """After Ctrl-C: ignore any further Ctrl-C, say so in one line, return 130."""
    with contextlib.suppress(ValueError):  # ValueError: not the main thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    say(f"{prog or program_name()}: interrupted")
    return INTERRUPTED


def _first_interrupt_only(signum, frame) -> None:
    """SIGINT in run_main: KeyboardInterrupt, once; the cleanup it sets off cannot be interrupted again."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigint_handler(handler):
    """SIGINT goes to handler while the block runs (when this is the main thread), then back."""
    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread, where Python runs every signal handler
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def out_of_memory(error: BaseException) -> str | None:
    """'out of memory: ...' with the size of the allocation that failed, if error is running out of memory."""
    text = str(error)
    if not isinstance(error, MemoryError) and not any(sign in text for sign in OUT_OF_MEMORY):
        return None
    cpu = re.search(r"tried to allocate (\d+) bytes", text, re.IGNORECASE)  # torch's CPU allocator
    cuda = re.search(r"tried to allocate ([\d.]+ [KMGTPE]iB)", text, re.IGNORECASE)  # the CUDA caching allocator
    size = byte_text(int(cpu[1])) if cpu else cuda[1] if cuda else None
    line = f"out of memory: an allocation of {size} failed" if size else "out of memory"
    with contextlib.suppress(ValueError, OSError, AttributeError):  # no sysconf names: say less
        line += f" (this machine has {byte_text(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))})"
    return line


def byte_text(count: float) -> str:
    """A byte count in decimal units, three digits: 4.19 GB."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB", "EB"):
        if count < 1000 or unit == "EB":
            return f"{count:.0f} B" if unit == "B" else f"{count:.3g} {unit}"
        count /= 1000
    return f"{count:.3g} EB"


def run_main(main) -> int:
    """main() of a command-line program, ending in one line and a clean exit code whatever the
    environment does to it: Ctrl-C, stdout closed or full, memory exhausted, a file it cannot write."""
    with sigint_handler(_first_interrupt_only):
        try:
            code = main()
            sys.stdout.flush()  # now, not at exit: a full disk must reach the handlers below
            return code
        except KeyboardInterrupt:
            if stdout_error():  # write what was printed before Ctrl-C; quietly give up if that fails
                _silence_stdout()
            return interrupted()
        except SystemExit:  # a usage error, sys.exit(): what main printed before it is written too
            if stdout_error():
                _silence_stdout()
            raise
        except OSError as error:
            if isinstance(error, BrokenPipeError) or stdout_error() or _lost_write(error):
                return stdout_failed(error)
            where = f": {error.filename}" if error.filename else ""
            say(f"{program_name()}: error: {error.strerror or error}{where}")
            return 1
        except (MemoryError, RuntimeError) as error:  # torch reports an allocation it cannot make as a RuntimeError
            line = out_of_memory(error)
            if line is None:
                raise
            say(f"{program_name()}: error: {line}")
            return 1


# -- the device --------------------------------------------------------------------------------------

def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        choices=DEVICE_CHOICES,
        help="where tensors live: 'auto' picks CUDA when a GPU is visible, else the CPU "
        "(default: %(default)s)",
    )


def device_or_exit(parser: argparse.ArgumentParser, name: str) -> torch.device:
    """pick_device for a command line: an unavailable device is a usage error (exit 2)."""
    try:
        return pick_device(name)
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits; keeps type checkers calm

"""Command-line plumbing shared by every program in the lab: an argument parser whose errors
are one line, the argparse value types, and the --device choice.

Every number a flag accepts is parsed by one of the types here, so "what counts as a valid
--lr" is decided in one place, and the one-line message names the bad value and the range.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad value ends in one line on stderr and exit code 2.

    The default prints the whole usage block first; for a learner the one line that
    names the bad value and what is allowed is the useful part.
    """

    def error(self, message: str) -> None:  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


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
        existed = path.exists()
        try:  # the one sure test of "writable" (permissions, read-only disks, /proc): open it to append
            with open(path, "ab"):
                pass
        except OSError as err:
            raise argparse.ArgumentTypeError(f"{text!r} cannot be written: {err.strerror}") from None
        if not existed:
            path.unlink()  # leave nothing behind until the program writes it
        return path

    parse.__name__ = "file path"
    return parse


# -- the end of a program ------------------------------------------------------------------------------

def stdout_closed() -> int:
    """What a program does when its reader went away (`... | head`): stop quietly, exit code 1.

    The recipe of Python's signal module docs ("Note on SIGPIPE"): point stdout at devnull so that
    the interpreter's final flush cannot raise a second time.
    """
    import os
    import sys

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1


def run_main(main) -> int:
    """main() of a command-line program, ending quietly when its output pipe is closed early."""
    try:
        return main()
    except BrokenPipeError:
        return stdout_closed()


# -- the device --------------------------------------------------------------------------------------

def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        choices=DEVICE_CHOICES,
        help="where tensors live: 'auto' picks CUDA when a GPU is visible, else the CPU "
        "(default: %(default)s)",
    )


def pick_device(name: str = "auto") -> torch.device:
    """Turn 'auto' | 'cpu' | 'cuda' into a torch.device, or raise ValueError saying why not."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device cuda: no CUDA device is visible to torch {torch.__version__}; "
                "use --device cpu or --device auto"
            )
        return torch.device("cuda")
    raise ValueError(f"--device {name!r}: choose one of {', '.join(DEVICE_CHOICES)}")


def device_or_exit(parser: argparse.ArgumentParser, name: str) -> torch.device:
    """pick_device for a command line: an unavailable device is a usage error (exit 2)."""
    try:
        return pick_device(name)
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits; keeps type checkers calm

"""The plumbing every lesson shares: the command line, printing an observation beside its
expectation, catching the errors a lesson provokes on purpose, and the exit code.

A lesson does the autograd itself, in plain sight; it hands this module only what it
saw and what it expected, and why:

    lab = Lab.from_argv("05 · backward", __doc__)
    lab.show("y = x**2 + 2*x; y.backward()")
    lab.check("x.grad", x.grad, 8.0, "dy/dx = 2x + 2 = 8")
    with lab.expect_error("does not require grad", "nothing upstream asked for a gradient"):
        torch.tensor(1.0).backward()
    sys.exit(lab.finish(["--device cuda", "..."]))
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TextIO

import torch

from tensor_features.utils import OneLineArgumentParser, add_device_argument, device_or_exit

LEFT_WIDTH = 40  # "x.grad = 8" column
LINE_WIDTH = 120  # past this, the expectation goes on its own line
MESSAGE_WIDTH = 96  # provoked error messages are cut here; the full text is one `str(err)` away


def format_value(value: Any) -> str:
    """A short, exact-enough text for an observed or expected value."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.numel() == 1 and value.dim() == 0:
            return format_value(value.item())
        if value.numel() <= 16:
            return format_value(value.cpu().tolist())
        shape = "×".join(str(s) for s in value.shape)
        return f"<{shape} {str(value.dtype).removeprefix('torch.')}>"
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        inner = ", ".join(format_value(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    if isinstance(value, torch.Size):
        return str(tuple(value))
    return str(value)


def values_match(observed: Any, expected: Any, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
    """Equality for exact things, closeness for floating point, shape-aware for tensors."""
    if isinstance(observed, torch.Tensor) or isinstance(expected, torch.Tensor):
        obs = torch.as_tensor(observed).detach().cpu()
        exp = torch.as_tensor(expected).detach().cpu()
        if obs.shape != exp.shape:
            if not (obs.numel() == 1 and exp.numel() == 1):
                return False
            obs, exp = obs.reshape(()), exp.reshape(())
        if obs.is_floating_point() or exp.is_floating_point():
            return torch.allclose(obs.double(), exp.double(), rtol=rtol, atol=atol)
        return torch.equal(obs, exp.to(obs.dtype))
    if isinstance(observed, (list, tuple)) and isinstance(expected, (list, tuple)):
        return len(observed) == len(expected) and all(
            values_match(o, e, rtol=rtol, atol=atol) for o, e in zip(observed, expected)
        )
    if isinstance(observed, float) or isinstance(expected, float):
        if isinstance(observed, bool) or isinstance(expected, bool):
            return observed == expected
        try:
            return math.isclose(float(observed), float(expected), rel_tol=rtol, abs_tol=atol)
        except (TypeError, ValueError):
            return False
    return observed == expected


@dataclass
class Caught:
    """What a provoked error or warning turned out to be (filled in when the block ends)."""

    error: BaseException | None = None
    warnings: list[str] = field(default_factory=list)


class Lab:
    """Numbers the observations, prints each beside its expectation and counts agreement."""

    def __init__(self, title: str, device: torch.device | str = "cpu", stream: TextIO | None = None):
        self.title = title
        self.device = torch.device(device)
        self.stream = stream if stream is not None else sys.stdout
        self.observation = 0
        self.passed = 0
        self.failed: list[str] = []
        self.args: argparse.Namespace | None = None  # set by from_argv
        self._print(f"{title:<44} torch {torch.__version__} · device {self.device}")

    @classmethod
    def from_argv(
        cls,
        title: str,
        description: str | None,
        argv: list[str] | None = None,
        add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    ) -> "Lab":
        """Parse a lesson's command line (``--device`` and any extra flags) and start the lab.

        The parsed namespace is kept as ``lab.args`` for lesson-specific flags.
        """
        parser = OneLineArgumentParser(
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_device_argument(parser)
        if add_arguments is not None:
            add_arguments(parser)
        if argv is None and "ipykernel" in sys.modules:
            argv = []  # opened as a notebook: the kernel's own argv is not ours
        args = parser.parse_args(argv)
        lab = cls(title, device_or_exit(parser, args.device))
        lab.args = args
        return lab

    # -- printing -------------------------------------------------------------------------

    def _print(self, text: str = "") -> None:
        print(text, file=self.stream)

    def show(self, code: str) -> None:
        """Start the next numbered observation with the code it runs."""
        self.observation += 1
        lines = code.strip("\n").splitlines()
        self._print(f"[{self.observation}] {lines[0]}")
        for line in lines[1:]:
            self._print(f"    {line}")

    def note(self, text: str) -> None:
        """An explanation, indented under the current observation."""
        for line in text.strip("\n").splitlines():
            self._print(f"      {line}")

    def _record(self, ok: bool, left: str, expected: str, why: str) -> bool:
        mark = "  ok" if ok else "FAIL"
        right = f"expected {expected}" + (f"  — {why}" if why else "")
        line = f"{mark}  {left:<{LEFT_WIDTH}} {right}"
        if len(line) > LINE_WIDTH:
            self._print(f"{mark}  {left}")
            self._print(" " * (len(mark) + 2 + LEFT_WIDTH + 1) + right)
        else:
            self._print(line)
        if ok:
            self.passed += 1
        else:
            self.failed.append(f"[{self.observation}] {left}")
        return ok

    # -- the checks -----------------------------------------------------------------------

    def check(
        self,
        label: str,
        observed: Any,
        expected: Any,
        why: str = "",
        rtol: float = 1e-5,
        atol: float = 1e-6,
    ) -> bool:
        """Print ``label = observed`` beside ``expected (why)`` and count whether they agree."""
        ok = values_match(observed, expected, rtol=rtol, atol=atol)
        return self._record(ok, f"{label} = {format_value(observed)}", format_value(expected), why)

    @contextmanager
    def expect_error(
        self, match: str, why: str, error_type: type[BaseException] = RuntimeError
    ) -> Iterator[Caught]:
        """Run a block that should raise ``error_type`` whose message contains ``match``.

        The error is caught and shown, never a traceback. A block that does not raise, or
        raises something else, is a disagreement like any other.
        """
        caught = Caught()
        try:
            yield caught
        except Exception as err:  # noqa: BLE001 - any surprise is reported, not raised
            caught.error = err
        err = caught.error
        ok = isinstance(err, error_type) and match in str(err)
        if err is None:
            shown = "no error"
        else:
            message = " ".join(str(err).split())
            if len(message) > MESSAGE_WIDTH:
                message = message[: MESSAGE_WIDTH - 1] + "…"
            shown = f"{type(err).__name__}: {message}"
        self._record(ok, shown, f'"{match}"', why)

    @contextmanager
    def expect_warning(self, match: str, why: str) -> Iterator[Caught]:
        """Run a block that should warn with a message containing ``match``; show the warning."""
        caught = Caught()
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            yield caught
        caught.warnings = [" ".join(str(r.message).split()) for r in records]
        hits = [w for w in caught.warnings if match in w]
        shown = hits[0] if hits else (caught.warnings[0] if caught.warnings else "no warning")
        if len(shown) > MESSAGE_WIDTH:
            shown = shown[: MESSAGE_WIDTH - 1] + "…"
        self._record(bool(hits), f"warning: {shown}", f'"{match}"', why)

    # -- the end --------------------------------------------------------------------------

    def finish(self, tries: list[str] = ()) -> int:
        """Print the count and the "Try:" lines; return the exit code (1 if anything disagreed)."""
        total = self.passed + len(self.failed)
        self._print()
        if self.failed:
            self._print(f"{self.passed}/{total} checks match; these do not:")
            for failure in self.failed:
                self._print(f"  {failure}")
        else:
            self._print(f"{self.passed}/{total} checks match across {self.observation} observations.")
        for line in tries:
            self._print(f"Try: {line}")
        return 1 if self.failed else 0

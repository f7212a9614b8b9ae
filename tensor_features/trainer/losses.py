"""The trainer's losses, one registry: every word, symbol and function that differs between losses.

Every loss here is

    L(w) = mean((f(x) − y)²) + weight · mean((f′(x) − t(x))²)

and a loss is its derivative target t (none for mse, the original loss) and where its weight
comes from. The command line's --loss choices, the report's formulas and the plots' labels are
read from LOSSES, so a new loss is one more LossKind below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

DATA_TERM = "mean((f − y)²)"


def clean_slope(x: torch.Tensor) -> torch.Tensor:
    """d/dx of the clean curve x²: an exact target, unlike the noisy y."""
    return 2 * x


def no_slope(x: torch.Tensor) -> torch.Tensor:
    """A slope of 0 everywhere: the target of a penalty on the slope."""
    return torch.zeros_like(x)


@dataclass(frozen=True)
class LossKind:
    """One loss: its name on the command line and what the report, the plots and the maths need."""

    name: str
    summary: str  # its part of --loss's help, after "name: "
    target: Callable[[torch.Tensor], torch.Tensor] | None = None  # t(x); None: no derivative term
    term: str | None = None  # the derivative term, as the report writes it
    symbol: str | None = None  # the derivative term's weight, as the report writes it
    weight_flag: str | None = None  # the TrainConfig field (and --flag) that holds that weight
    weight_words: str | None = None  # what the weight weighs, for the message when it is set alone

    @property
    def uses_derivative(self) -> bool:
        return self.target is not None


LOSSES = {kind.name: kind for kind in (
    LossKind("mse", f"the original {DATA_TERM}"),
    LossKind("sobolev",
             "+ β·mean((f′ − 2x)²), the derivative of the clean curve as a second target",
             target=clean_slope, term="mean((f′ − 2x)²)", symbol="β",
             weight_flag="beta", weight_words="the derivative term"),
    LossKind("smooth", "+ λ·mean(f′²), a slope penalty",
             target=no_slope, term="mean(f′²)", symbol="λ",
             weight_flag="penalty", weight_words="the slope penalty"),
)}


@dataclass(frozen=True)
class Loss:
    """Which loss, and the weight of its derivative term (0 for mse)."""

    name: str = "mse"
    weight: float = 0.0

    def __post_init__(self):
        if self.name not in LOSSES:
            raise ValueError(f"unknown loss {self.name!r}: choose one of {', '.join(LOSSES)}")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"the weight of a loss must be a finite number >= 0, "
                             f"got {self.weight}")

    @property
    def kind(self) -> LossKind:
        return LOSSES[self.name]

    @property
    def uses_derivative(self) -> bool:
        return self.kind.uses_derivative

    @property
    def symbol(self) -> str | None:
        return self.kind.symbol

    @property
    def formula(self) -> str:
        kind = self.kind
        if not kind.uses_derivative:
            return DATA_TERM
        return f"{DATA_TERM} + {kind.symbol}·{kind.term}, {kind.symbol} = {self.weight:g}"

    def derivative_target(self, x: torch.Tensor) -> torch.Tensor:
        """t(x), the target of f′ in the derivative term."""
        return self.kind.target(x)

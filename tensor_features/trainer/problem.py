"""The fixed-basis problem of one run: data, features, loss and its exact optimum, checked usable.

With a fixed basis every loss is a quadratic in w (model.py), so its exact minimum is one
least-squares solve away. That solve needs ΦᵀΦ (or the Hessian of a derivative loss) to be
invertible in float64; when it is not, ProblemError says why in the mathematics' own terms and
the command line (train.py) turns it into the flags to change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from tensor_features.trainer.fast import rows_layout
from tensor_features.trainer.losses import Loss
from tensor_features.trainer.model import (DerivativeRows, Optimum, least_squares_optimum,
                                           make_feature_derivatives, make_features)


@dataclass(frozen=True)
class RankShortfall:
    """Φ has rank below D: every feature (x^k, and P_k(x) − P_k(0)) is 0 at x = 0, so D features
    need D distinct nonzero x, and the n points have fewer."""

    degree: int
    points: int  # n
    nonzero: int  # the points other than x = 0

    @property
    def enough_points(self) -> int:
        """The fewest evenly spaced, symmetric points with `degree` nonzero ones (even n: no 0)."""
        return self.degree + self.degree % 2


class ProblemError(ValueError):
    """The exact optimum of a problem cannot be had: ΦᵀΦ or the Hessian is singular, or the
    optimum is not finite in float64. `reason` says which; `shortfall` or `too_alike` what helps."""

    def __init__(self, reason: str, degree: int, basis: str, shortfall: RankShortfall | None = None,
                 too_alike: bool = False, sweep: Sequence[int] | None = None):
        self.reason, self.degree, self.basis = reason, degree, basis
        self.shortfall, self.too_alike, self.sweep = shortfall, too_alike, sweep
        advice = ""
        if shortfall is not None:
            advice = (f"; degree {degree} needs {degree} distinct nonzero x and the "
                      f"{shortfall.points} points have {shortfall.nonzero} (every feature is 0 at "
                      f"x = 0): {shortfall.enough_points} points or more")
        elif too_alike:
            advice = "; the features are too alike for float64 here"
        super().__init__(f"degree {degree}, {basis} basis: {reason}{advice}")

    def in_sweep(self, degrees: Sequence[int]) -> ProblemError:
        """The same error, raised by a sweep over these degrees."""
        return ProblemError(self.reason, self.degree, self.basis, self.shortfall, self.too_alike,
                            degrees)


@dataclass
class Problem:
    """The fixed-basis problem of one run: data, features, loss and its exact optimum."""

    x: torch.Tensor
    y: torch.Tensor
    degree: int
    basis: str  # 'monomial' or 'legendre'
    loss: Loss
    phi: torch.Tensor
    optimum: Optimum

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        return make_features(inputs, self.degree, self.basis)


def exact_problem(x: torch.Tensor, y: torch.Tensor, degree: int, basis: str, loss: Loss,
                  rows_layout_for_fast: bool = False) -> Problem:
    """Φ (and Φ′ for a derivative loss) and the loss's exact optimum; ProblemError if unusable."""
    shortfall = rank_shortfall(x, degree)
    # Φ's rank is below D: decided exactly, not by rounding.
    if shortfall and not loss.uses_derivative:
        raise ProblemError("ΦᵀΦ is singular", degree, basis, shortfall)
    phi = make_features(x, degree, basis)
    if rows_layout_for_fast:
        phi = rows_layout(phi)  # same Φ, stored feature by feature for FastLoss (no second copy)
    rows = None
    if loss.uses_derivative:
        rows = DerivativeRows(make_feature_derivatives(x, degree, basis), loss.derivative_target(x),
                              loss.weight)
    try:
        optimum = least_squares_optimum(phi, y, derivative=rows)
    except torch.linalg.LinAlgError:
        raise ProblemError("the normal equations are singular in float64", degree, basis, shortfall,
                           too_alike=shortfall is None) from None
    eigenvalues = optimum.hessian_eigenvalues
    finite = torch.isfinite(optimum.w).all() and torch.isfinite(eigenvalues).all()
    if not (math.isfinite(optimum.loss) and finite):
        raise ProblemError("the exact optimum is not a finite number in float64", degree, basis)
    if eigenvalues[0] <= 0:
        raise ProblemError(f"the Hessian is singular in float64 (smallest eigenvalue "
                           f"{eigenvalues[0].item():.3g})", degree, basis, shortfall,
                           too_alike=shortfall is None)
    return Problem(x, y, degree, basis, loss, phi, optimum)


def rank_shortfall(x: torch.Tensor, degree: int) -> RankShortfall | None:
    """Why Φ has rank below D (too few nonzero x); None if it has enough points."""
    nonzero = int((x != 0).sum())
    if nonzero >= degree:
        return None
    return RankShortfall(degree, x.numel(), nonzero)

"""01 finite differences: every value the lesson's checks saw (and the locals its observations
left), against oracles written here.

For sin at x = 1: the difference quotients in exact arithmetic (mpmath, 200 bits) at the very
points x ± h that float64 and float32 round to, and the whole range a quotient can take on a
machine whose sin is within SIN_ULPS of exact (2 ulps in float64, 4 in float32: see there), since
the difference of two values in [0.5, 1) is a whole number of ulps. From those ranges, every h of
the grid that could be best on such a machine: the lesson's "within a decade" claims are proved
for each of them, not only for this CPU. The model's minima against a numerical minimisation,
the Taylor terms to one order more than the lesson states, and torch.autograd.gradcheck itself
for the float32 claim. For the regression loss: the trainer's own printout (its first loss),
the closed form in numpy float64 and torch.autograd. TRY_PROMISES: what each of the lesson's Try
lines does (tests/lab/test_tries.py); the "fails" of Try 2 and 4 is proved by the same
whole-number-of-ulps argument.
"""

import math
import re
import warnings

import mpmath
import numpy as np
import pytest
import torch

from tests.support import Promise, load_lesson
from tensor_features.lab.core import format_value
from tensor_features import train
from tensor_features.load_data import load_data
from tensor_features.trainer.model import initial_weights

lesson = load_lesson("01_derivatives_by_hand_finite_differences.py")

# The lesson's Try lines, in order: the exit code and the text each adds to the output.
TRY_PROMISES = [
    Promise(shows=("device cuda",)),
    Promise(exit=1, shows=("FAIL  gradient = ", "ok  calls = 6")),
    Promise(exit=1, shows=("FAIL  gradient = ", "ok  calls = 6")),
    Promise(exit=1, shows=("FAIL  gradient = ", "ok  calls = 6")),
]

MUTANTS = [
    # [1]: the central difference divided by h instead of 2h
    ("01_derivatives_by_hand_finite_differences.py",
     "(2 * h)).item() - slope for h in steps}\n    lab.note(error_table(forward, central))\n    second",
     "(h)).item() - slope for h in steps}\n    lab.note(error_table(forward, central))\n    second"),
    # [1]: the forward quotient takes sin(x − h) for sin(x)
    ("01_derivatives_by_hand_finite_differences.py",
     "    forward = {h: ((torch.sin(x + h) - torch.sin(x)) / h).item() - slope for h in steps}\n"
     "    central = {h: ((torch.sin(x + h) - torch.sin(x - h)) / (2 * h)).item() - slope for h in steps}\n"
     "    lab.note(error_table(forward, central))\n    second",
     "    forward = {h: ((torch.sin(x + h) - torch.sin(x - h)) / h).item() - slope for h in steps}\n"
     "    central = {h: ((torch.sin(x + h) - torch.sin(x - h)) / (2 * h)).item() - slope for h in steps}\n"
     "    lab.note(error_table(forward, central))\n    second"),
    # [2]: the step taken is h itself (no rounding of x + h)
    ("01_derivatives_by_hand_finite_differences.py",
     "    step_taken = ((x + h) - x).item()", "    step_taken = h"),
    # [3]: the worst h instead of the best
    ("01_derivatives_by_hand_finite_differences.py",
     "    best_central_h = min(steps, key=lambda h: abs(central[h]))",
     "    best_central_h = max(steps, key=lambda h: abs(central[h]))"),
    # [4]: "float32" measured in float64
    ("01_derivatives_by_hand_finite_differences.py",
     "    x = torch.tensor(1.0, dtype=torch.float32)", "    x = torch.tensor(1.0, dtype=torch.float64)"),
    # [5]: every nudge moves w₀
    ("01_derivatives_by_hand_finite_differences.py",
     "        nudge[i] = h  # move wᵢ alone", "        nudge[0] = h  # move wᵢ alone"),
    # [5]: the closed form without its 2
    ("01_derivatives_by_hand_finite_differences.py",
     "    closed_form = 2 * phi.T @ (phi @ w - y) / n\n    lab.check(gradient",
     "    closed_form = phi.T @ (phi @ w - y) / n\n    lab.check(gradient"),
    # [5]: another initial w than the trainer's
    ("01_derivatives_by_hand_finite_differences.py",
     "    w = initial_weights(3, seed=0, device=lab.device).to(dtype)",
     "    w = initial_weights(3, seed=1, device=lab.device).to(dtype)"),
]

# Written by a tester who had not read these tests, from the lesson alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # helper error_table: forward column loses its abs(): the table prints signed forward errors (negative)
    ("01_derivatives_by_hand_finite_differences.py",
     "{abs(forward[h]):15.1e}", "{forward[h]:15.1e}"),
    # [1] forward difference written as a backward one (x - h): error changes sign and size (4.1e-2 not 4.3e-2 at 1e-1)
    ("01_derivatives_by_hand_finite_differences.py",
     "    forward = {h: ((torch.sin(x + h) - torch.sin(x)) / h).item() - slope for h in steps}\n    central = {h: ((torch.sin(x + h) - torch.sin(x - h)) / (2 * h)).item() - slope for h in steps}\n    lab.note(error_table(forward, central))\n    second, third",
     "    forward = {h: ((torch.sin(x) - torch.sin(x - h)) / h).item() - slope for h in steps}\n    central = {h: ((torch.sin(x + h) - torch.sin(x - h)) / (2 * h)).item() - slope for h in steps}\n    lab.note(error_table(forward, central))\n    second, third"),
    # [1] central difference divided by h, not 2h: every central error becomes ~cos 1 = 0.54
    ("01_derivatives_by_hand_finite_differences.py",
     "    central = {h: ((torch.sin(x + h) - torch.sin(x - h)) / (2 * h)).item() - slope for h in steps}\n    lab.note(error_table(forward, central))\n    second, third",
     "    central = {h: ((torch.sin(x + h) - torch.sin(x - h)) / h).item() - slope for h in steps}\n    lab.note(error_table(forward, central))\n    second, third"),
    # [1] exact slope taken as sin 1 instead of cos 1: every error in [1]'s table is ~0.30 off
    ("01_derivatives_by_hand_finite_differences.py",
     "    slope = math.cos(1.0)  # the exact derivative of sin at 1, to float64 rounding",
     "    slope = math.sin(1.0)  # the exact derivative of sin at 1, to float64 rounding"),
    # [2] h = 1e-11 instead of 1e-12: step taken, gap count and both errors at the tiny step change
    ("01_derivatives_by_hand_finite_differences.py",
     "    h = 1e-12\n", "    h = 1e-11\n"),
    # [2] gaps counted in units of 2^-52 (eps) instead of 2^-53: half-gaps, gaps == round(gaps) becomes False
    ("01_derivatives_by_hand_finite_differences.py",
     "    gaps = difference / 2**-53", "    gaps = difference / 2**-52"),
    # [2] central error at h = 1e-12 divided by h, not 2h: central_error becomes ~+0.54
    ("01_derivatives_by_hand_finite_differences.py",
     "    central_error = ((torch.sin(x + h) - torch.sin(x - h)) / (2 * h)).item() - math.cos(1.0)",
     "    central_error = ((torch.sin(x + h) - torch.sin(x - h)) / h).item() - math.cos(1.0)"),
    # [3] |f''| taken as cos 1 instead of sin 1: the forward model minimum (1.8e-8) and its decade check change
    ("01_derivatives_by_hand_finite_differences.py",
     "    f, f2, f3 = math.sin(1.0), math.sin(1.0), math.cos(1.0)  # |f|, |f″|, |f‴| at 1",
     "    f, f2, f3 = math.sin(1.0), math.cos(1.0), math.cos(1.0)  # |f|, |f″|, |f‴| at 1"),
    # [3] copy-paste: best central h chosen by the forward errors: best central h 1e-8 (error 2.6e-9), not 1e-5
    ("01_derivatives_by_hand_finite_differences.py",
     "    best_central_h = min(steps, key=lambda h: abs(central[h]))",
     "    best_central_h = min(steps, key=lambda h: abs(forward[h]))"),
    # [4] the float32 lesson built in float64: table equals [1]'s, 1 + 1e-8 != 1, forward[1e-8] is not -cos 1
    ("01_derivatives_by_hand_finite_differences.py",
     "    x = torch.tensor(1.0, dtype=torch.float32)", "    x = torch.tensor(1.0, dtype=torch.float64)"),
    # [4] gradcheck's step taken as 1e-4: float32 central error (1.4e-5) is now within tolerance, claim flips to False
    ("01_derivatives_by_hand_finite_differences.py",
     "    h = 1e-6  # gradcheck's default step", "    h = 1e-4  # gradcheck's default step"),
    # [5] loss summed instead of averaged: every finite-difference gradient entry is 100x too large
    ("01_derivatives_by_hand_finite_differences.py",
     "        calls += 1  # what finite differences cost: evaluations of L\n        return ((phi @ w - y) ** 2).mean()",
     "        calls += 1  # what finite differences cost: evaluations of L\n        return ((phi @ w - y) ** 2).sum()"),
    # [5] off-by-one loop over weights: last gradient entry stays 0 and calls = 4, not 6
    ("01_derivatives_by_hand_finite_differences.py",
     "    for i in range(len(w)):\n        nudge = torch.zeros_like(w)\n        nudge[i] = h  # move wᵢ alone",
     "    for i in range(len(w) - 1):\n        nudge = torch.zeros_like(w)\n        nudge[i] = h  # move wᵢ alone"),
    # [5] initial w drawn with seed 1 (code and closed form agree): the gradient values all change
    ("01_derivatives_by_hand_finite_differences.py",
     "    w = initial_weights(3, seed=0, device=lab.device).to(dtype)  # 3 × 1",
     "    w = initial_weights(3, seed=1, device=lab.device).to(dtype)  # 3 × 1"),
    # [6] forward difference written backward (w - nudge): forward - closed_form becomes -h·Hii/2, sign flipped
    ("01_derivatives_by_hand_finite_differences.py",
     "        forward[i] = (loss(w + nudge) - loss(w)) / h",
     "        forward[i] = (loss(w) - loss(w - nudge)) / h"),
    # [6] h = 0.5 instead of 1: forward's error halves (still h·Hii/2, so the lesson agrees); values differ
    ("01_derivatives_by_hand_finite_differences.py",
     "    h = 1.0\n", "    h = 0.5\n"),
]

STEPS = [10.0**-k for k in range(1, 13)]
# The worst accuracy of torch's sin assumed for any machine, in ulps: CUDA documents 2 for sin and
# sinf; on CPUs torch uses MKL's VML (about 1 ulp) or SLEEF, whose float64 sin is its 1-ulp
# version and whose float32 sin on x86 vector units its 3.5-ulp one (ATen's vec256/vec512 float).
SIN_ULPS = {torch.float64: 2, torch.float32: 4}


def points(dtype: torch.dtype, h: float) -> tuple[float, float, float]:
    """(x + h, x − h, h) at x = 1 as the dtype rounds them (IEEE arithmetic, the same on every
    device): Python's floats for float64, numpy's float32 for float32."""
    if dtype == torch.float64:
        return 1.0 + h, 1.0 - h, h
    one, step = np.float32(1.0), np.float32(h)
    return float(one + step), float(one - step), float(step)


def possible_errors(dtype: torch.dtype, scheme: str, h: float) -> tuple[list[float], float]:
    """Every error (quotient − cos 1) the lesson's forward or central quotient of sin at 1 can have
    on a machine whose sin is within SIN_ULPS[dtype] ulps of exact, and the slack each may be off by.

    sin(x ± h) lies in [0.5, 1), where the dtype's values are eps/2 apart: a difference of two of
    them is a whole number k of those gaps, within 2·SIN_ULPS[dtype] of the exact one; the same input
    evaluated twice gives the same value (k = 0). The slack: the division's rounding (~eps)."""
    eps = torch.finfo(dtype).eps
    gap = eps / 2
    plus, minus, step = points(dtype, h)
    if scheme == "forward":
        minus, denominator = 1.0, step
    else:
        denominator = 2 * step
    with mpmath.workprec(200):
        exact_gaps = (mpmath.sin(plus) - mpmath.sin(minus)) / gap
        if plus == minus:
            ks = [0]
        else:
            ks = range(int(mpmath.ceil(exact_gaps - 2 * SIN_ULPS[dtype])),
                       int(mpmath.floor(exact_gaps + 2 * SIN_ULPS[dtype])) + 1)
        quotients = [k * gap / denominator for k in ks]
        errors = [float(q - mpmath.cos(1)) for q in quotients]
    return errors, 4 * eps * max(1.0, max(abs(float(q)) for q in quotients)) + 1e-15


def error_range(dtype: torch.dtype, scheme: str, h: float) -> tuple[float, float]:
    """The lowest and highest of possible_errors, widened by the slack."""
    errors, slack = possible_errors(dtype, scheme, h)
    return min(errors) - slack, max(errors) + slack


def abs_range(dtype, scheme, h) -> tuple[float, float]:
    """The smallest and largest |error| possible at h."""
    errors, slack = possible_errors(dtype, scheme, h)
    return max(0.0, min(abs(e) for e in errors) - slack), max(abs(e) for e in errors) + slack


def possible_best(dtype, scheme) -> tuple[list[float], tuple[float, float]]:
    """Every h of the grid that can have the smallest |error| on such a machine, and the range of
    that smallest |error|."""
    ranges = {h: abs_range(dtype, scheme, h) for h in STEPS}
    ceiling = min(high for _, high in ranges.values())
    return [h for h, (low, _) in ranges.items() if low <= ceiling], (min(low for low, _ in ranges.values()), ceiling)


def model_minimum(truncation, rounding) -> tuple[float, float]:
    """(h, error) minimising truncation(h) + rounding(h), found numerically on a fine log grid."""
    grid = np.logspace(-14, 0, 200_001)
    total = truncation(grid) + rounding(grid)
    best = int(np.argmin(total))
    return float(grid[best]), float(total[best])


def assert_steps(steps):
    assert steps == pytest.approx(STEPS, rel=1e-15) and len(steps) == 12


def assert_within(dtype, scheme, errors: dict[float, float]):
    for h, error in errors.items():
        low, high = error_range(dtype, scheme, h)
        assert low <= error <= high, (dtype, scheme, h, low, error, high)


# -- [1] ----------------------------------------------------------------------------------------------

def test_error_table_lists_each_h_with_both_absolute_errors():
    table = lesson.error_table({1e-1: -0.0429, 1e-2: 0.00421}, {1e-1: -0.0009, 1e-2: 9.0e-6})
    lines = table.splitlines()
    assert len(lines) == 3 and "forward" in lines[0] and "central" in lines[0]
    assert lines[1].split() == ["1e-01", "4.3e-02", "9.0e-04"]
    assert lines[2].split() == ["1e-02", "4.2e-03", "9.0e-06"]


def test_slope_of_sine_matches_exact_arithmetic_at_every_h(lab):
    seen = lab.run(lesson.slope_of_sine)
    out = seen.names
    assert out["x"].dtype == torch.float64 and out["x"].item() == 1.0
    assert out["slope"] == pytest.approx(math.cos(1.0), abs=1e-16)
    assert_steps(out["steps"])
    assert_within(torch.float64, "forward", out["forward"])
    assert_within(torch.float64, "central", out["central"])
    assert len(re.findall(r"^\s+1e-\d\d\s", lab.stream.getvalue(), re.M)) == 12  # the table's rows


def test_truncation_ratios_match_taylor_one_order_further(lab):
    seen = lab.run(lesson.slope_of_sine)
    # forward: f′ + h·f″/2 + h²·f‴/6 + h³·f⁗/24 …, so error / (h·f″/2) = 1 + h·f‴/(3f″) + h²·f⁗/(12f″);
    # for sin: f‴/f″ = cot 1, f⁗/f″ = −1. Rounding moves the ratio by under 2e-9 at h = 1e-3.
    h = 1e-3
    cot = math.cos(1.0) / math.sin(1.0)
    assert seen["forward[1e-3] / (1e-3 * second / 2)"] == pytest.approx(1 + h * cot / 3 - h**2 / 12, abs=1e-8)
    # central: f′ + h²·f‴/6 + h⁴·f⁽⁵⁾/120 …, so error / (h²·f‴/6) = 1 + h²·f⁽⁵⁾/(20 f‴) = 1 − h²/20 for sin.
    h = 1e-2
    assert seen["central[1e-2] / (1e-2**2 * third / 6)"] == pytest.approx(1 - h**2 / 20, abs=1e-8)
    assert (seen.names["second"], seen.names["third"]) == (-math.sin(1.0), -math.cos(1.0))


# -- [2] ----------------------------------------------------------------------------------------------

def test_too_small_a_step_is_rounding_within_its_bound(lab):
    seen = lab.run(lesson.too_small_a_step)
    out = seen.names
    h = 1e-12
    assert out["h"] == h and out["eps"] == 2.0**-52
    # 1 + 1e-12 rounds to 1 + 4504·2⁻⁵² (1e-12 / 2⁻⁵² = 4503.6), and the subtraction is exact.
    assert seen["step_taken"] == (1.0 + h) - 1.0 == 4504 * 2.0**-52
    with mpmath.workprec(200):
        exact_gaps = float((mpmath.sin(1.0 + h) - mpmath.sin(1.0)) / 2.0**-53)
    assert out["gaps"] == round(out["gaps"]) and abs(out["gaps"] - exact_gaps) <= 2 * SIN_ULPS[torch.float64]
    assert seen["gaps == round(gaps)"] is True
    assert_within(torch.float64, "forward", {h: out["forward_error"]})
    assert_within(torch.float64, "central", {h: out["central_error"]})
    assert out["truncation"] == pytest.approx(h * math.sin(1.0) / 2)
    # "cos 1 lies at least 4e-5 from every value the quotient can take": the distance from cos 1
    # to the grid k·2⁻⁵³/h, for every whole k.
    with mpmath.workprec(200):
        spacing = mpmath.mpf(2) ** -53 / h
        k = int(mpmath.nint(mpmath.cos(1) / spacing))
        distance = float(min(abs(j * spacing - mpmath.cos(1)) for j in (k - 1, k, k + 1)))
    assert distance >= 4e-5 and distance > 1e6 * h * math.sin(1.0) / 2
    assert abs(out["forward_error"]) >= distance - 1e-15
    assert seen["abs(forward_error) > 1e6 * truncation"] is True
    # The bounds the lesson states hold for the worst case of any machine, not only here.
    for scheme, bound in (("forward", 4 * 2.0**-52 * math.sin(1.0) / h), ("central", 2 * 2.0**-52 * math.sin(1.0) / h)):
        low, high = error_range(torch.float64, scheme, h)
        assert max(abs(low), abs(high)) < bound, scheme
    assert seen["forward_error"] == out["forward_error"] and seen["central_error"] == out["central_error"]


# -- [3] ----------------------------------------------------------------------------------------------

def test_model_minima_against_a_numerical_minimisation(lab):
    out = lab.run(lesson.best_step).names
    eps, s, c = 2.0**-52, math.sin(1.0), math.cos(1.0)
    h, error = model_minimum(lambda h: h * s / 2, lambda h: eps * s / h)
    assert out["forward_minimum"] == pytest.approx(error, rel=1e-6)
    assert h == pytest.approx(math.sqrt(2 * eps), rel=1e-3)  # the comment's 2.1e-8
    h, error = model_minimum(lambda h: h**2 * c / 6, lambda h: eps * s / h)
    assert out["central_minimum"] == pytest.approx(error, rel=1e-6)
    assert h == pytest.approx(1.0e-5, rel=0.02)  # the comment's 1.0e-5
    assert (out["forward_minimum"], out["central_minimum"]) == (pytest.approx(1.77e-8, rel=0.01),
                                                                 pytest.approx(2.77e-11, rel=0.01))


def test_best_step_is_one_any_machine_could_find_and_every_such_one_passes(lab):
    seen = lab.run(lesson.best_step)
    out = seen.names
    eps = 2.0**-52
    assert out["eps"] == eps and out["x"].dtype == torch.float64 and out["x"].item() == 1.0
    assert out["slope"] == pytest.approx(math.cos(1.0), abs=1e-16)
    assert_steps(out["steps"])
    assert_within(torch.float64, "forward", out["forward"])
    assert_within(torch.float64, "central", out["central"])
    forward_minimum = math.sqrt(2 * eps) * math.sin(1.0)
    central_h = (3 * eps * math.sin(1.0) / math.cos(1.0)) ** (1 / 3)
    central_minimum = 1.5 * eps * math.sin(1.0) / central_h

    candidates, (lowest, highest) = possible_best(torch.float64, "forward")
    assert out["best_forward_h"] == min(out["forward"], key=lambda h: abs(out["forward"][h]))
    assert out["best_forward_h"] == pytest.approx(min(candidates, key=lambda h: abs(h - out["best_forward_h"])))
    for h in candidates:  # the lesson's claim, for every machine
        assert abs(math.log10(h / math.sqrt(eps))) <= 1, h
    assert abs(math.log10(lowest / forward_minimum)) <= 1 and abs(math.log10(highest / forward_minimum)) <= 1
    assert seen["math.log10(best_forward_h / math.sqrt(eps))"] == pytest.approx(
        math.log10(out["best_forward_h"] / math.sqrt(eps)))

    candidates, (lowest, highest) = possible_best(torch.float64, "central")
    assert out["best_central_h"] == min(out["central"], key=lambda h: abs(out["central"][h]))
    assert out["best_central_h"] == pytest.approx(min(candidates, key=lambda h: abs(h - out["best_central_h"])))
    for h in candidates:
        assert abs(math.log10(h / eps ** (1 / 3))) <= 1, h
    assert highest <= 10 * central_minimum
    assert lowest < central_minimum / 10  # no lower bound: luck can cancel truncation (the comment)
    assert seen["abs(central[best_central_h]) <= 10 * central_minimum"] is True


# -- [4] ----------------------------------------------------------------------------------------------

def test_float32_quotients_and_what_they_say_about_gradcheck(lab):
    seen = lab.run(lesson.in_float32)
    out = seen.names
    eps = 2.0**-23
    assert out["x"].dtype == torch.float32 and out["x"].item() == 1.0 and out["eps"] == eps
    assert out["slope"] == pytest.approx(math.cos(1.0), abs=1e-16)
    assert_steps(out["steps"])
    assert_within(torch.float32, "forward", out["forward"])
    assert_within(torch.float32, "central", out["central"])
    assert np.float32(1.0) + np.float32(1e-8) == np.float32(1.0)  # 1e-8 is under half of 2⁻²³
    assert seen["(x + 1e-8 == x).item()"] is True
    assert seen["forward[1e-8]"] == -math.cos(1.0)

    candidates, (lowest, highest) = possible_best(torch.float32, "forward")
    assert out["best_forward_h"] == min(out["forward"], key=lambda h: abs(out["forward"][h]))
    assert out["best_forward_h"] in [pytest.approx(h) for h in candidates]
    forward_minimum = math.sqrt(2 * eps) * math.sin(1.0)
    assert out["forward_minimum"] == pytest.approx(forward_minimum)
    for h in candidates:
        assert abs(math.log10(h / math.sqrt(eps))) <= 1, h
    # At most 10 times the model's minimum on every such machine; no lower bound holds: with sin
    # 4 ulps off, rounding can cancel part of the truncation error and leave 1.3e-5.
    assert highest <= 10 * forward_minimum and lowest < forward_minimum / 10
    assert seen["abs(forward[best_forward_h]) <= 10 * forward_minimum"] is True

    # gradcheck's defaults (eps 1e-6, atol 1e-5, rtol 1e-3), read from its signature.
    import inspect
    defaults = inspect.signature(torch.autograd.gradcheck).parameters
    assert (defaults["eps"].default, defaults["atol"].default, defaults["rtol"].default) == (1e-6, 1e-5, 1e-3)
    assert out["tolerance"] == pytest.approx(1e-5 + 1e-3 * math.cos(1.0))
    low32, _ = abs_range(torch.float32, "central", 1e-6)
    assert low32 > out["tolerance"] * 1.01  # on every machine, with |numerical derivative| ≤ 1.01 cos 1
    _, high64 = abs_range(torch.float64, "central", 1e-6)
    assert high64 < 1e-6 * out["tolerance"] and high64 < 2e-10
    assert_within(torch.float64, "central", {1e-6: out["error_in_float64"]})
    assert out["h"] == 1e-6  # gradcheck's default eps
    assert seen["abs(central[h]) > tolerance"] is True and seen["abs(error_in_float64) < 1e-6 * tolerance"] is True


def test_gradcheck_itself_rejects_float32_sin_at_1_and_accepts_float64():
    x32 = torch.tensor([1.0], dtype=torch.float32, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert torch.autograd.gradcheck(torch.sin, (x32,), raise_exception=False) is False
    assert any("not a double precision floating point" in str(w.message) for w in caught)
    x64 = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(torch.sin, (x64,))


def test_float32_points_are_rounded_the_same_whichever_way_h_is_converted():
    """points() rounds h to float32 first, then adds; rounding 1 ± h (a double) once gives the
    same points for every h of the grid, so the oracle does not depend on how a device converts."""
    for h in STEPS:
        plus, minus, _ = points(torch.float32, h)
        assert (plus, minus) == (float(np.float32(1.0 + h)), float(np.float32(1.0 - h)))
        x = torch.tensor(1.0, dtype=torch.float32)
        assert ((x + h).item(), (x - h).item()) == (plus, minus)


# -- [5], [6] -----------------------------------------------------------------------------------------

def regression_problem():
    """The trainer's data (python -m tensor_features.train: n 100, noise 0.1, seed 0) and initial w,
    in numpy float64, with Φ = [x, x², x³] built here."""
    x, y = load_data(100, 0.1, 0)
    x = x.numpy().astype(np.float64)
    phi = np.concatenate([x, x**2, x**3], axis=1)
    w = initial_weights(3, 0, torch.device("cpu")).numpy().astype(np.float64)
    return phi, y.numpy().astype(np.float64), w


def autograd_gradient(phi, y, w) -> np.ndarray:
    w_t = torch.tensor(w, requires_grad=True)
    ((torch.tensor(phi) @ w_t - torch.tensor(y)) ** 2).mean().backward()
    return w_t.grad.numpy()


def test_regression_gradient_against_numpy_and_autograd(lab):
    seen = lab.run(lesson.regression_gradient)
    out = seen.names
    phi, y, w = regression_problem()
    n = len(y)
    closed_form = 2 * phi.T @ (phi @ w - y) / n
    assert np.allclose(autograd_gradient(phi, y, w), closed_form, rtol=0, atol=1e-14)
    # Φ in float64 from the trainer's x (x**3 may round differently in torch and numpy: an ulp).
    assert out["phi"].dtype == torch.float64 and np.allclose(out["phi"].cpu().numpy(), phi, rtol=1e-15, atol=0)
    assert np.array_equal(out["y"].cpu().numpy(), y) and np.array_equal(out["w"].cpu().numpy(), w)
    assert out["h"] == 1e-3 and out["n"] == n == 100
    assert seen["gradient"].shape == (3, 1)
    assert np.allclose(seen["gradient"].cpu().numpy(), closed_form, rtol=0, atol=1e-9)
    assert np.allclose(out["closed_form"].cpu().numpy(), closed_form, rtol=0, atol=1e-13)
    assert seen["calls"] == 2 * phi.shape[1] == 6  # two loss evaluations per weight, counted by hand


def test_the_loss_is_the_trainers(lab, capsys):
    """The trainer's own run prints its first loss: the lesson's L at its w, on its data."""
    out = lab.run(lesson.regression_gradient).names
    train.main(["--device", "cpu", "--epochs", "1", "--update", "manual"])
    printed = capsys.readouterr().out
    first_loss = float(re.search(r"Epoch 0, Loss ([0-9.]+)", printed)[1])
    phi, y, w = (out[name].cpu().numpy() for name in ("phi", "y", "w"))
    assert first_loss == pytest.approx(float(((phi @ w - y) ** 2).mean()), abs=1e-4)  # printed to 4 decimals


def test_quadratic_needs_no_small_step(lab):
    seen = lab.run(lesson.quadratic_needs_no_small_step)
    out = seen.names
    phi, y, w = regression_problem()
    n = len(y)
    assert out["h"] == 1.0
    gradient = autograd_gradient(phi, y, w)
    hessian_diagonal = np.diag(2 * phi.T @ phi / n).reshape(-1, 1)
    assert np.allclose(seen["central"].cpu().numpy(), gradient, rtol=0, atol=1e-12)
    assert np.allclose(out["forward"].cpu().numpy(), gradient + hessian_diagonal / 2, rtol=0, atol=1e-12)
    assert np.allclose(out["hessian_diagonal"].cpu().numpy(), hessian_diagonal, rtol=0, atol=1e-14)
    assert np.allclose(seen["forward - closed_form"].cpu().numpy(), hessian_diagonal / 2, rtol=0, atol=1e-12)


def grid_distance(value: float, spacing: float) -> float:
    """How far value lies from the nearest whole multiple of spacing."""
    with mpmath.workprec(200):
        value, spacing = mpmath.mpf(value), mpmath.mpf(spacing)
        return float(abs(value - mpmath.nint(value / spacing) * spacing))


def test_the_rounding_tries_fail_on_every_machine():
    """Try 4 (h = 1e-11) and Try 2 (float32): L(w ± h·eᵢ) lies in [0.25, 0.5), so each difference
    of two losses is a whole number of gaps (2⁻⁵⁴ in float64, 2⁻²⁵ in float32), and the quotient
    a whole multiple of gap/2h. An entry of ∇L far from every such multiple cannot match within
    the check's 1e-9, whatever the CPU. Try 3 (forward differences) is off by h·Hᵢᵢ/2."""
    phi, y, w = regression_problem()
    n = len(y)
    gradient = (2 * phi.T @ (phi @ w - y) / n).ravel()
    loss = float(((phi @ w - y) ** 2).mean())
    assert 0.25 < loss - 1e-3 and loss + 1e-3 < 0.5  # and so L(w ± h·eᵢ) for h ≤ 1e-3
    h = 1e-11
    assert max(grid_distance(g, 2.0**-54 / (2 * h)) for g in gradient) > 5e-7
    # float32: the closed form itself is float32 too, within 1e-6 of float64's; the grid is 1.5e-5.
    h = 1e-3
    assert max(grid_distance(g, 2.0**-25 / (2 * h)) for g in gradient) > 1e-6 + 1e-9 + 1e-6
    assert min(h * np.diag(2 * phi.T @ phi / n) / 2) > 1.4e-4  # "1.5e-4 to 3.4e-4"
    assert max(h * np.diag(2 * phi.T @ phi / n) / 2) < 3.5e-4


# -- what each check expects -------------------------------------------------------------------------

def expectations(lab) -> dict[str, list[str]]:
    """label -> the printed "expected ..." texts of the checks under that label (without the why),
    in the order printed."""
    lines = lab.stream.getvalue().splitlines()
    found = {}
    for number, line in enumerate(lines):
        match = re.match(r"^(?:  ok|FAIL)  (.*)$", line)
        if not match:
            continue
        text = match[1] if "expected " in match[1] else match[1] + " " + lines[number + 1].strip()
        left, right = text.split(" expected ", 1)
        label = left.rsplit(" = ", 1)[0].strip()
        found.setdefault(label, []).append("expected " + right.split("  — ", 1)[0].strip())
    return found


def shown(expected, rtol=None, atol=None) -> set[str]:
    """The texts a check may print for an expectation: the value alone (an exact match), or with
    its tolerance (a close match, "ok" never hiding a tolerance)."""
    text = f"expected {format_value(expected)}"
    return {text} if rtol is None else {text, f"{text} (±{atol:g} + {rtol:g}·|expected|)"}


def test_each_check_expects_what_the_oracle_says(lab):
    """The expected value and the tolerance of every check, as printed, against values computed
    here: a wrong expectation or a loosened bound would otherwise pass under forced agreement."""
    for observation in (lesson.slope_of_sine, lesson.too_small_a_step, lesson.best_step, lesson.in_float32,
                        lesson.regression_gradient, lesson.quadratic_needs_no_small_step):
        lab.run(observation)
    printed = expectations(lab)
    eps64, s, c = 2.0**-52, math.sin(1.0), math.cos(1.0)
    phi, y, w = regression_problem()
    gradient = torch.tensor(2 * phi.T @ (phi @ w - y) / len(y))
    half_diagonal = torch.tensor(np.diag(2 * phi.T @ phi / len(y)).reshape(-1, 1) / 2)
    decade = shown(0.0, 1e-5, 1.0)
    wanted = {
        "forward[1e-3] / (1e-3 * second / 2)": shown(1.0, 1e-3, 0),
        "central[1e-2] / (1e-2**2 * third / 6)": shown(1.0, 1e-4, 0),
        "step_taken": shown(4504 * 2.0**-52),
        "gaps == round(gaps)": shown(True),
        "abs(forward_error) > 1e6 * truncation": shown(True),
        "forward_error": shown(0.0, 0, 4 * eps64 * s / 1e-12) - shown(0.0),
        "central_error": shown(0.0, 0, 2 * eps64 * s / 1e-12) - shown(0.0),
        "math.log10(best_forward_h / math.sqrt(eps))": decade,
        "math.log10(best_central_h / eps ** (1 / 3))": decade,
        "math.log10(abs(forward[best_forward_h]) / forward_minimum)": decade,
        "abs(central[best_central_h]) <= 10 * central_minimum": shown(True),
        "abs(forward[best_forward_h]) <= 10 * forward_minimum": shown(True),
        "(x + 1e-8 == x).item()": shown(True),
        "forward[1e-8]": shown(-c),
        "abs(central[h]) > tolerance": shown(True),
        "abs(error_in_float64) < 1e-6 * tolerance": shown(True),
        "gradient": shown(gradient, 0, 1e-9),
        "calls": shown(6),
        "central": shown(gradient, 0, 1e-12),
        "forward - closed_form": shown(half_diagonal, 0, 1e-12),
    }
    assert set(printed) == set(wanted), set(printed) ^ set(wanted)
    for label, texts in wanted.items():
        assert all(text in texts for text in printed[label]), (label, printed[label], texts)
    assert sum(len(texts) for texts in printed.values()) == 21  # every check, [3]'s and [4]'s decades


# -- what the learner reads ---------------------------------------------------------------------------

def test_the_printed_code_is_the_lesson_source(lab):
    lab.run(lesson.slope_of_sine)
    lab.run(lesson.regression_gradient)
    printed = lab.stream.getvalue()
    for line in ("forward = {h: ((torch.sin(x + h) - torch.sin(x)) / h).item() - slope for h in steps}",
                 "central = {h: ((torch.sin(x + h) - torch.sin(x - h)) / (2 * h)).item() - slope for h in steps}",
                 "gradient[i] = (loss(w + nudge) - loss(w - nudge)) / (2 * h)",
                 "closed_form = 2 * phi.T @ (phi @ w - y) / n", "calls += 1"):
        assert line in printed, line
    assert "lab.check" not in printed


def test_no_autograd_in_the_lesson():
    """Chapter 01 comes before any autograd API: the lesson's code never asks for a gradient."""
    source = (lesson.__file__ and open(lesson.__file__).read())
    code = "\n".join(line.split("#")[0] for line in source.splitlines())
    for word in ("requires_grad", "backward(", "autograd.", "torch.func"):
        assert word not in code, word

"""01 · finite differences: the derivative as a slope, measured, and why h cannot be too small.

Before any autograd: the derivative f′(x) is the slope of f at x, and a computer can measure it
as the slope of a short secant, (f(x + h) − f(x)) / h. The lesson measures it for sin at x = 1,
where f′(1) = cos 1 = 0.5403, for h from 1e-1 down to 1e-12. The error first falls with h
(truncation), then grows again (rounding), so some h is best; in float32 the best is poor, which
is why gradcheck wants float64. Last, the gradient of the original regression's loss, one weight
at a time, and what that costs: two evaluations of the loss per weight, counted.

Source: Nocedal & Wright, Numerical Optimization (2nd ed.), §8.1, for the error model.
"""

# %% Setup
import math

import torch

from tensor_features.lab import Lab, Try
from tensor_features.load_data import load_data
from tensor_features.trainer.model import initial_weights
from tensor_features.utils import feature_map

lab = Lab.start("01 · finite differences", __doc__, __name__)


def error_table(forward: dict[float, float], central: dict[float, float]) -> str:
    """|error| of each difference quotient, one row per h, as a table for lab.note."""
    rows = ["     h    |forward error|   |central error|"]
    rows += [f"{h:6.0e}   {abs(forward[h]):15.1e}   {abs(central[h]):15.1e}" for h in forward]
    return "\n".join(rows)


# %% [1] The derivative as a slope
# f′(x) is the slope of f at x. Measure it with a short secant: the forward difference
# (f(x + h) − f(x)) / h, or the central difference (f(x + h) − f(x − h)) / (2h), which looks
# both ways. Taylor's series says how far each lands from f′(x):
#     f(x ± h) = f(x) ± h·f′(x) + h²·f″(x)/2 ± h³·f‴(x)/6 + …
# so forward = f′ + h·f″/2 + … (its error shrinks like h), and central = f′ + h²·f‴/6 + … (the
# even terms cancel: its error shrinks like h²). This is the truncation error. Here f = sin at
# x = 1: f′ = cos 1, f″ = −sin 1, f‴ = −cos 1, in float64. Read the table from the top: each
# decade of h takes a digit off the forward error and two off the central one, until the errors
# grow again, below h ≈ 1e-8 (forward) and h ≈ 1e-5 (central) ([2] says why).
def slope_of_sine(lab: Lab) -> None:
    """Forward and central differences of sin at x = 1 in float64, h = 1e-1 … 1e-12"""
    x = torch.tensor(1.0, dtype=torch.float64)
    slope = math.cos(1.0)  # the exact derivative of sin at 1, to float64 rounding
    steps = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12]
    forward = {h: ((torch.sin(x + h) - torch.sin(x)) / h).item() - slope for h in steps}
    central = {h: ((torch.sin(x + h) - torch.sin(x - h)) / (2 * h)).item() - slope for h in steps}
    lab.note(error_table(forward, central))
    second, third = -math.sin(1.0), -math.cos(1.0)  # f″(1) and f‴(1) for f = sin
    # Where truncation dominates, each error is its first Taylor term, sign included.
    lab.check(forward[1e-3] / (1e-3 * second / 2), 1.0,
              "forward error = h·f″/2 at h = 1e-3: the next term, h·f‴/(3f″) = 2e-4 of it, "
              "and rounding, under 2e-9 of it, stay below 1e-3", rtol=1e-3, atol=0)
    lab.check(central[1e-2] / (1e-2**2 * third / 6), 1.0,
              "central error = h²·f‴/6 at h = 1e-2: the next term, h²/20 = 5e-6 of it, and "
              "rounding, under 5e-9 of it, stay below 1e-4", rtol=1e-4, atol=0)


lab.run(slope_of_sine)


# %% [2] Too small an h: rounding
# Below h ≈ 1e-8 the forward error grows again, roughly like 1/h. A float64 keeps about 16
# significant digits: its values are eps = 2⁻⁵² ≈ 2.2e-16 apart just above 1, and 2⁻⁵³ apart near
# sin 1 = 0.84 (that spacing is one ulp, a unit in the last place, there). So x + h is rounded (the
# step taken is not quite h), sin(x + h) and sin(x) are each rounded, and their difference, a few
# thousand of those 2⁻⁵³ gaps at h = 1e-12, is divided by a tiny h: the quotient can only move in
# steps of 2⁻⁵³/h ≈ 1.1e-4. That is the rounding error, about eps·|f|/h: the smaller h, the larger
# it is.
def too_small_a_step(lab: Lab) -> None:
    """At h = 1e-12 in float64: the step taken, the difference in float64 gaps, the error"""
    x = torch.tensor(1.0, dtype=torch.float64)
    h = 1e-12
    eps = torch.finfo(torch.float64).eps  # 2⁻⁵², the gap between 1 and the next float64
    step_taken = ((x + h) - x).item()
    lab.check(step_taken, round(h / eps) * eps,
              "x + h lands on the nearest float64, and those are eps apart above 1: "
              "4504·eps = 1.0000889e-12, not 1e-12", rtol=0, atol=0)
    difference = (torch.sin(x + h) - torch.sin(x)).item()
    gaps = difference / 2**-53
    lab.check(gaps == round(gaps), True,
              "sin(x + h) and sin(x) both lie in [0.5, 1), where float64 values are 2⁻⁵³ apart: "
              "their difference is a whole number of those gaps")
    forward_error = ((torch.sin(x + h) - torch.sin(x)) / h).item() - math.cos(1.0)
    central_error = ((torch.sin(x + h) - torch.sin(x - h)) / (2 * h)).item() - math.cos(1.0)
    lab.note(f"forward error {forward_error:.2e}, central error {central_error:.2e}; "
             f"the quotient moves in steps of 2⁻⁵³/h = {2**-53 / h:.2e}")
    truncation = h * math.sin(1.0) / 2  # h·|f″|/2: what the Taylor term alone predicts
    lab.check(abs(forward_error) > 1e6 * truncation, True,
              "far above the Taylor term (4e-13): cos 1 lies at least 4e-5 from every value the "
              "quotient can take, whole gaps of 2⁻⁵³ divided by h")
    # Worst case: torch's float64 sin is within 2 ulps (CUDA's documented bound; on CPUs torch
    # uses MKL or SLEEF's 1-ulp sin), an ulp near 0.84 being eps/2: two values off by eps each; and
    # x + h off by eps/2, which moves sin(x + h) by |cos 1|·eps/2 more. In all under 2.3·eps, below
    # 4·eps·|sin 1| = 3.4·eps.
    lab.check(forward_error, 0.0, "within the rounding bound 4·eps·|f|/h",
              rtol=0, atol=4 * eps * math.sin(1.0) / h)
    lab.check(central_error, 0.0, "within 2·eps·|f|/h: errors of the same kinds, divided by 2h",
              rtol=0, atol=2 * eps * math.sin(1.0) / h)


lab.run(too_small_a_step)


# %% [3] The best h
# Truncation falls with h, rounding grows as h shrinks: their sum is smallest in between. With
# the model (eps·|f|/h the typical rounding error; [2]'s bound is the worst case)
#     forward: h·|f″|/2 + eps·|f|/h is smallest at h = √(2·eps·|f/f″|) = 2.1e-8, of the
#              order of √eps = 1.5e-8, where it is √(2·eps·|f·f″|) = 1.8e-8;
#     central: h²·|f‴|/6 + eps·|f|/h is smallest at h = (3·eps·|f/f‴|)^(1/3) = 1.0e-5, of the
#              order of eps^(1/3) = 6.1e-6, where it is 1.5·eps·|f|/h = 2.8e-11.
# The grid has one h per decade, and rounding is erratic (it has a sign, and sin may differ by
# an ulp or two from one machine to the next), so the checks ask for the right decade: within a
# factor 10. For central differences only an upper bound holds: at the best h, rounding may by
# chance cancel part of the truncation error and leave much less.
def best_step(lab: Lab) -> None:
    """The best h of the grid in float64, against √eps (forward) and eps^(1/3) (central)"""
    x = torch.tensor(1.0, dtype=torch.float64)
    slope = math.cos(1.0)
    steps = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12]
    forward = {h: ((torch.sin(x + h) - torch.sin(x)) / h).item() - slope for h in steps}
    central = {h: ((torch.sin(x + h) - torch.sin(x - h)) / (2 * h)).item() - slope for h in steps}
    eps = torch.finfo(torch.float64).eps
    f, f2, f3 = math.sin(1.0), math.sin(1.0), math.cos(1.0)  # |f|, |f″|, |f‴| at 1
    best_forward_h = min(steps, key=lambda h: abs(forward[h]))
    best_central_h = min(steps, key=lambda h: abs(central[h]))
    lab.note(f"best forward h {best_forward_h:.0e} (error {abs(forward[best_forward_h]):.1e}), "
             f"best central h {best_central_h:.0e} (error {abs(central[best_central_h]):.1e})")
    lab.check(math.log10(best_forward_h / math.sqrt(eps)), 0.0,
              "decades between the best forward h and √eps = 1.5e-8: under one", atol=1.0)
    lab.check(math.log10(best_central_h / eps ** (1 / 3)), 0.0,
              "decades between the best central h and eps^(1/3) = 6.1e-6: under one", atol=1.0)
    forward_minimum = math.sqrt(2 * eps * f * f2)  # the model's smallest forward error
    central_minimum = 1.5 * eps * f / (3 * eps * f / f3) ** (1 / 3)  # and central's
    lab.check(math.log10(abs(forward[best_forward_h]) / forward_minimum), 0.0,
              "decades between the best forward error and the model's 1.8e-8: under one",
              atol=1.0)
    lab.check(abs(central[best_central_h]) <= 10 * central_minimum, True,
              "the best central error is at most 10 times the model's 2.8e-11")


lab.run(best_step)


# %% [4] The same in float32: why gradcheck wants float64
# float32 keeps about 7 significant digits: eps = 2⁻²³ ≈ 1.2e-7. Rounding wins much sooner: the
# best forward h is near √eps ≈ 3e-4, and the model's best forward error is 4.1e-4, not ~1e-8
# (on a given machine, rounding may by luck cancel part of it, as in [3]).
# Below h ≈ 6e-8, x + h even rounds back to x itself. torch.autograd.gradcheck compares a
# gradient with central differences at h = 1e-6 and accepts a difference up to
# atol + rtol·|numerical derivative|, 1e-5 + 1e-3·0.54 ≈ 5.5e-4 here (its defaults,
# torch/autograd/gradcheck.py). In float32 the central error at h = 1e-6 (the table's row) is
# several times that: so gradcheck wants float64 inputs, and warns for float32 ones (lesson 06
# custom_function shows the warning and the failure).
def in_float32(lab: Lab) -> None:
    """Forward and central differences of sin at x = 1 in float32"""
    x = torch.tensor(1.0, dtype=torch.float32)
    slope = math.cos(1.0)
    steps = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12]
    forward = {h: ((torch.sin(x + h) - torch.sin(x)) / h).item() - slope for h in steps}
    central = {h: ((torch.sin(x + h) - torch.sin(x - h)) / (2 * h)).item() - slope for h in steps}
    lab.note(error_table(forward, central))
    lab.check((x + 1e-8 == x).item(), True,
              "float32 values are 1.2e-7 apart just above 1: 1 + 1e-8 rounds back to 1")
    lab.check(forward[1e-8], -slope,
              "so sin(x + h) − sin(x) = 0, the quotient is 0 and the error all of −cos 1",
              rtol=0, atol=0)
    eps = torch.finfo(torch.float32).eps
    best_forward_h = min(steps, key=lambda h: abs(forward[h]))
    lab.check(math.log10(best_forward_h / math.sqrt(eps)), 0.0,
              "decades between the best forward h and √eps = 3.5e-4: under one", atol=1.0)
    forward_minimum = math.sqrt(2 * eps * math.sin(1.0) ** 2)  # [3]'s model, float32's eps
    lab.check(abs(forward[best_forward_h]) <= 10 * forward_minimum, True,
              "the best forward error is at most 10 times the model's 4.1e-4; float64's is near "
              "1e-8 ([3])")
    h = 1e-6  # gradcheck's default step
    tolerance = 1e-5 + 1e-3 * slope  # what gradcheck accepts here, about 5.5e-4
    lab.check(abs(central[h]) > tolerance, True,
              "in float32 the central difference at gradcheck's h = 1e-6 is off by more than "
              "gradcheck accepts: a correct derivative would be reported as a mismatch")
    x64 = torch.tensor(1.0, dtype=torch.float64)
    error_in_float64 = ((torch.sin(x64 + h) - torch.sin(x64 - h)) / (2 * h)).item() - slope
    lab.check(abs(error_in_float64) < 1e-6 * tolerance, True,
              "in float64 the same difference is off by less than a millionth of it, 5.5e-10")


lab.run(in_float32)


# %% [5] The gradient of the regression loss, one weight at a time
# Now a function of three numbers. The lab's trainer (python -m tensor_features.train) fits 100
# points x on [−1, 1], with targets y = x² + noise, by y ≈ Φw with features Φ = [x, x², x³] and
# three weights w: the original regression. Its loss is L(w) = mean((Φw − y)²), here at the
# trainer's initial w.
# Its gradient has one entry per weight, ∂L/∂wᵢ: nudge wᵢ alone by ±h, keep the others, and
# take the central difference. Calculus gives the gradient in closed form to check against: with
# the residuals r = Φw − y, L = (1/n)·Σₖ rₖ² and ∂rₖ/∂wᵢ = Φₖᵢ, so ∂L/∂wᵢ = (2/n)·Σₖ rₖ·Φₖᵢ, all
# three at once ∇L = 2Φᵀ(Φw − y)/n. The cost: two evaluations of L per weight, each a pass over all
# n points; 6 here, two million for a model with a million weights. Autograd (chapters 02 and 05)
# gets every entry from one forward pass and one backward pass.
def regression_gradient(lab: Lab) -> None:
    """∇L of the regression loss at the trainer's initial w by central differences, float64"""
    dtype = torch.float64
    # The trainer's data and initial w (float32), turned into float64. load_data and
    # initial_weights draw on the CPU, where their seeded generators are, and move the numbers
    # to the device they are given: hence device=lab.device.
    x, y = load_data(n=100, noise=0.1, seed=0, device=lab.device)
    x, y = x.to(dtype), y.to(dtype)
    w = initial_weights(3, seed=0, device=lab.device).to(dtype)  # 3 × 1
    phi = feature_map(x)  # Φ = [x, x², x³], n × 3
    calls = 0

    def loss(w: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1  # what finite differences cost: evaluations of L
        return ((phi @ w - y) ** 2).mean()

    h = 1e-3
    gradient = torch.zeros_like(w)
    for i in range(len(w)):
        nudge = torch.zeros_like(w)
        nudge[i] = h  # move wᵢ alone
        gradient[i] = (loss(w + nudge) - loss(w - nudge)) / (2 * h)
    n = len(y)
    closed_form = 2 * phi.T @ (phi @ w - y) / n
    lab.check(gradient, closed_form,
              "L is quadratic in w: no third derivative, no truncation error; rounding alone, "
              "about eps·L/h ≈ 1e-13, is left", rtol=0, atol=1e-9)
    lab.check(calls, 2 * len(w), "two evaluations of L per weight, three weights")


lab.run(regression_gradient)


# %% [6] A quadratic needs no small h
# [5]'s check could be tight because L is a quadratic in w: its Taylor series stops after the
# h² term, L(w ± h·eᵢ) = L(w) ± h·∂L/∂wᵢ + h²·Hᵢᵢ/2 with H = 2ΦᵀΦ/n (eᵢ moves wᵢ alone). So the
# central difference is exact at any h, even h = 1, and the forward difference is off by exactly
# h·Hᵢᵢ/2, the truncation term of [1] with nothing after it.
def quadratic_needs_no_small_step(lab: Lab) -> None:
    """At h = 1, central differences of L are still exact, forward ones off by h·Hᵢᵢ/2"""
    x, y = load_data(n=100, noise=0.1, seed=0, device=lab.device)  # as in [5]: lab.device
    x, y = x.to(torch.float64), y.to(torch.float64)
    w = initial_weights(3, seed=0, device=lab.device).to(torch.float64)  # as in [5]
    phi = feature_map(x)
    n = len(y)

    def loss(w: torch.Tensor) -> torch.Tensor:
        return ((phi @ w - y) ** 2).mean()

    h = 1.0
    central = torch.zeros_like(w)
    forward = torch.zeros_like(w)
    for i in range(len(w)):
        nudge = torch.zeros_like(w)
        nudge[i] = h
        central[i] = (loss(w + nudge) - loss(w - nudge)) / (2 * h)
        forward[i] = (loss(w + nudge) - loss(w)) / h
    closed_form = 2 * phi.T @ (phi @ w - y) / n
    hessian_diagonal = (2 * phi.T @ phi / n).diagonal().reshape(-1, 1)  # Hᵢᵢ
    lab.check(central, closed_form, "exact at h = 1: only rounding, about eps·L, is left",
              rtol=0, atol=1e-12)
    lab.check(forward - closed_form, h * hessian_diagonal / 2,
              "forward's error is exactly h·Hᵢᵢ/2: nothing after the h² term", rtol=0, atol=1e-12)


lab.run(quadratic_needs_no_small_step)


# %% The end
TRIES = [
    Try("the same measurements, on the GPU", flags="--device cuda", needs_cuda=True),
    Try("float32: values of L near 0.28 are 3e-8 apart, so the quotient moves in steps of "
        "3e-8/2h = 1.5e-5 and the gradient check fails",
        edit=("dtype = torch.float64", "dtype = torch.float32"), where=regression_gradient),
    Try("forward differences: each entry is off by h·Hᵢᵢ/2, 1.5e-4 to 3.4e-4 ([6]), so the "
        "gradient check fails; still 2 calls per weight",
        edit=("(loss(w + nudge) - loss(w - nudge)) / (2 * h)", "(loss(w + nudge) - loss(w)) / h"),
        where=regression_gradient),
    Try("h = 1e-11: rounding grows like 1/h, to about 1e-6, so the gradient check fails",
        edit=("h = 1e-3", "h = 1e-11"), where=regression_gradient),
]
lab.finish(TRIES)

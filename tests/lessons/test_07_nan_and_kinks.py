"""07 NaN and kinks: every value the lesson's checks saw, against an oracle written here: analytic
derivatives, float64 finite differences away from the kinks, and at each kink the subdifferential
built from one-sided differences, with its minimum-norm element found by projecting 0 onto it.
TRY_PROMISES: what each of the lesson's Try lines does (tests/lab/test_tries.py)."""

import math

import torch

from tests.support import Promise, load_lesson

lesson = load_lesson("07_debugging_gradients_nan_and_kinks.py")

# The lesson's Try lines, in order: the exit code and the text each adds to the output.
TRY_PROMISES = [
    Promise(shows=("device cuda",)),
    Promise(exit=1, shows=("FAIL  by_formula = [0.0, 0.25]", "FAIL  p.grad = [0.0, 0.25]", "20/22 checks match")),
    Promise(exit=1, shows=("FAIL  x.grad = [0.0, 0.0]",)),
]

MUTANTS = [
    ("07_debugging_gradients_nan_and_kinks.py", "    loss = torch.where(p > 0, root, 0.0).sum()", "    loss = root.sum()"),
    ("07_debugging_gradients_nan_and_kinks.py", "    safe_p = torch.where(p > 0, p, 1.0)\n", "    safe_p = p\n"),
    ("07_debugging_gradients_nan_and_kinks.py", "safe_sums / counts.clamp(min=1)", "safe_sums / counts"),
    ("07_debugging_gradients_nan_and_kinks.py", "torch.nn.functional.leaky_relu(x, 0.1)", "torch.nn.functional.leaky_relu(x, 0.2)"),
    ("07_debugging_gradients_nan_and_kinks.py", "gradient_at(torch.max, [1.0, 1.0])",
     "gradient_at(torch.max, [1.0, 0.5])"),
    ("07_debugging_gradients_nan_and_kinks.py", "lambda x: torch.maximum(x, zero)", "lambda x: torch.clamp(x, min=0)"),
    ("07_debugging_gradients_nan_and_kinks.py", "    return all(function(point + d) >= function(point) + g * d",
     "    return all(function(point + d) > function(point) + g * d"),
    ("07_debugging_gradients_nan_and_kinks.py", "    by_hand = torch.sqrt((x * x).sum())\n",
     "    by_hand = torch.linalg.vector_norm(x)\n"),
    ("07_debugging_gradients_nan_and_kinks.py", "str(torch.ops.aten.maximum.default._schema)",
     "str(torch.ops.aten.max.default._schema)"),
]

# Written by a tester who had not read these tests, from the lessons and the package alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # ---------------------------------------------------------------- 07 NaN and kinks
    # where_safe(): safe_p computed but sqrt still fed p: the NaN gradient at 0 comes back
    ('07_debugging_gradients_nan_and_kinks.py', 'loss = torch.where(p > 0, torch.sqrt(safe_p), 0.0).sum()', 'loss = torch.where(p > 0, torch.sqrt(p), 0.0).sum()'),
    # masked_division(): clamp(min=0) is no clamp: the "safe" gradient is NaN again
    ('07_debugging_gradients_nan_and_kinks.py', 'safe_means = safe_sums / counts.clamp(min=1)', 'safe_means = safe_sums / counts.clamp(min=0)'),
    # kinks(): max over a dim instead of the full max: tie gradient [1, 0] instead of [0.5, 0.5]
    ('07_debugging_gradients_nan_and_kinks.py', 'max_of_tie = gradient_at(torch.max, [1.0, 1.0])', 'max_of_tie = gradient_at(lambda x: x.max(dim=0).values, [1.0, 1.0])'),
    # rule_is_a_choice(): clamp where maximum is named: gradient 1 at the tie, not 0.5
    ('07_debugging_gradients_nan_and_kinks.py', 'gradient_at(lambda x: torch.maximum(x, zero), [0.0])', 'gradient_at(lambda x: torch.clamp(x, min=0.0), [0.0])'),
    # is_subgradient(): strict inequality: relu_allows loses 0 and 1 (the boundary subgradients)
    ('07_debugging_gradients_nan_and_kinks.py', 'return all(function(point + d) >= function(point) + g * d for d in steps)', 'return all(function(point + d) > function(point) + g * d for d in steps)'),
]

H = 1e-6


def one_sided_slopes(f, at: float = 0.0) -> tuple[float, float]:
    """(left, right) derivative of a float64 function of one variable, by one-sided differences."""
    return (f(at) - f(at - H)) / H, (f(at + H) - f(at)) / H


def min_norm_in(interval: tuple[float, float]) -> float:
    """The element of [low, high] closest to 0: the subgradient of minimum norm of a 1-D convex kink."""
    low, high = interval
    return min(max(0.0, low), high)


def as_list(t: torch.Tensor) -> list[float]:
    return t.detach().cpu().double().tolist()


def test_where_trap_finite_loss_nan_gradient(lab):
    seen = lab.run(lesson.where_trap)
    assert seen["loss"].item() == 2.0  # sqrt(4) + 0
    assert as_list(seen["root.grad"]) == [0.0, 1.0]  # where's backward: the mask, as numbers
    grad = as_list(seen["p.grad"])
    # sqrt's backward, grad / (2·sqrt(p)): 0 / 0 at p = 0 (NaN in IEEE 754 floats), 1 / 4 at p = 4.
    zero_over_zero = torch.tensor(0.0, dtype=torch.float64) / torch.tensor(0.0, dtype=torch.float64)
    assert math.isnan(zero_over_zero.item()) and math.isnan(grad[0]) and grad[1] == 1 / (2 * math.sqrt(4.0))


def test_where_safe_form_gives_zero_at_the_mask(lab):
    seen = lab.run(lesson.where_safe)
    assert seen["loss"].item() == 2.0
    # f(p) = sqrt(p) for p > 0, 0 otherwise: the left derivative at 0 is 0, and at 4 it is 1/4.
    f = lambda v: math.sqrt(v) if v > 0 else 0.0  # noqa: E731
    assert as_list(seen["p.grad"])[0] == one_sided_slopes(f, 0.0)[0] == 0.0
    assert math.isclose(as_list(seen["p.grad"])[1], (f(4 + H) - f(4 - H)) / (2 * H), rel_tol=1e-6)


def test_masked_division_nan_then_the_fix(lab):
    seen = lab.run(lesson.masked_division)
    assert seen["loss"].item() == 0.5  # 2 / 4
    grad = as_list(seen["sums.grad"])
    assert grad[0] == 1 / 4 and math.isnan(grad[1])  # d(s/c)/ds = 1/c; 0/0 for the empty group
    assert as_list(seen["safe_sums.grad"]) == [1 / 4, 0.0]  # the empty group divides by 1, gets a 0 from the mask


def test_kinks_match_the_min_norm_subgradient(lab):
    seen = lab.run(lesson.kinks)
    relu = lambda v: max(v, 0.0)  # noqa: E731
    leaky = lambda v: v if v > 0 else 0.1 * v  # noqa: E731
    assert as_list(seen["relu_at_0"]) == [min_norm_in(one_sided_slopes(relu))] == [0.0]
    assert as_list(seen["abs_at_0"]) == [min_norm_in(one_sided_slopes(abs))] == [0.0]
    assert math.isclose(as_list(seen["leaky_at_0"])[0], min_norm_in(one_sided_slopes(leaky)), rel_tol=1e-6)
    # The unit ball is the subdifferential of the norm at 0; its min-norm element is 0.
    assert as_list(seen["norm_at_0"]) == [0.0, 0.0]
    # max(x1, x2) at a tie: the segment between (1, 0) and (0, 1); the point nearest 0 minimises
    # t² + (1 − t)², at t = 1/2.
    t = min((i / 1000 for i in range(1001)), key=lambda s: s**2 + (1 - s) ** 2)
    assert as_list(seen["max_of_tie"]) == [t, 1 - t] == [0.5, 0.5]
    # sqrt at 0: the right difference quotient sqrt(h)/h = 1/sqrt(h) grows without bound.
    assert math.sqrt(1e-12) / 1e-12 > math.sqrt(1e-6) / 1e-6 > 100
    assert as_list(seen["sqrt_at_0"]) == [math.inf]


def test_the_rule_is_a_choice_among_valid_subgradients(lab):
    seen = lab.run(lesson.rule_is_a_choice)
    low, high = one_sided_slopes(lambda v: max(v, 0.0))
    candidates = (-0.5, 0.0, 0.5, 1.0, 1.5)
    assert seen["relu_allows"] == [g for g in candidates if low - 1e-9 <= g <= high + 1e-9]
    spellings = ("spelled_relu", "spelled_maximum", "spelled_max_dim")
    assert tuple(as_list(seen[k]) for k in spellings) == ([0.0], [0.5], [1.0])
    assert all(low - 1e-9 <= g[0] <= high + 1e-9 for g in (as_list(seen[k]) for k in spellings))
    # torch.maximum's schema, parsed here: two Tensor arguments (the docs' max.Tensor case), one Tensor out.
    name, arguments = seen["maximum_signature"].removeprefix("aten::").split(" -> ")[0].split("(", 1)
    assert name == "maximum" and arguments.rstrip(")").split(", ") == ["Tensor self", "Tensor other"]


def test_is_subgradient_on_abs():
    assert [g for g in (-1.5, -1.0, 0.0, 1.0, 1.5) if lesson.is_subgradient(abs, g)] == [-1.0, 0.0, 1.0]


def test_norm_by_hand_is_nan_where_vector_norm_is_zero(lab):
    seen = lab.run(lesson.norm_by_hand)
    assert seen["by_hand"].item() == 0.0
    assert all(math.isnan(g) for g in as_list(seen["x.grad"]))  # inf (sqrt′(0)) times 2x = 0
    x = torch.zeros(2, requires_grad=True)
    torch.linalg.vector_norm(x).backward()
    assert x.grad.tolist() == [0.0, 0.0]


def test_safe_where_passes_gradcheck_away_from_the_kink():
    p = torch.tensor([0.5, 4.0, -1.0], dtype=torch.float64, requires_grad=True)
    f = lambda t: torch.where(t > 0, torch.sqrt(torch.where(t > 0, t, 1.0)), 0.0)  # noqa: E731
    assert torch.autograd.gradcheck(f, (p,))

"""07 · NaN and kinks: NaN gradients from finite losses, and the gradients autograd picks at kinks.

A finite loss can have a NaN gradient: two traps and their fixes. Then the gradients at points
where the derivative does not exist, checked against the documented rule in "Autograd mechanics"
(Gradients for non-differentiable functions).
"""

# %% Setup
import math

import torch

from tensor_features.lab import Lab, Try

lab = Lab.start("07 · NaN and kinks", __doc__, __name__)


# %% [1] The torch.where trap: a finite loss, a NaN gradient
# The torch.where trap: a finite loss, a NaN gradient, because the branch that was not chosen still
# runs backward: where sends it a 0, and sqrt's backward divides that 0 by 2·sqrt(0) = 0, 0/0.
def where_trap(lab: Lab) -> None:
    """where(p > 0, sqrt(p), 0) at p = [0, 4]: the loss is finite, the gradient at 0 is NaN"""
    p = torch.tensor([0.0, 4.0], requires_grad=True)
    root = torch.sqrt(p)  # computed for every entry, also where the mask will drop it
    root.retain_grad()
    loss = torch.where(p > 0, root, 0.0).sum()
    loss.backward()
    lab.check(loss, 2.0, "sqrt(4) + 0: finite")
    lab.check(root.grad, [0.0, 1.0],
              "where sends a 0 to the branch it did not choose: a 0, not 'nothing'")
    # sqrt's backward is grad / (2 * result) (tools/autograd/derivatives.yaml); at p = 0 that is
    # 0 / 0.
    by_formula = root.grad / (2 * root)
    lab.check(by_formula, [math.nan, 0.25],
              "0 / (2·sqrt(0)) = 0 / 0 = NaN (IEEE 754); 1 / (2·2) = 0.25")
    # A known trap: pytorch/pytorch#68425 and #52248 (torch.where and NaN gradients).
    lab.check(p.grad, [math.nan, 0.25], "what backward() left in p.grad: the same")


lab.run(where_trap)


# %% [2] The safe form: mask the input before the op
# The safe form masks the input first.
def where_safe(lab: Lab) -> None:
    """Mask the input first: where(p > 0, sqrt(where(p > 0, p, 1)), 0) has gradient 0 at p = 0"""
    p = torch.tensor([0.0, 4.0], requires_grad=True)
    # sqrt never sees the 0, so its backward never divides by 2·sqrt(0) = 0
    safe_p = torch.where(p > 0, p, 1.0)
    loss = torch.where(p > 0, torch.sqrt(safe_p), 0.0).sum()
    loss.backward()
    lab.check(loss, 2.0, "the same loss as before")
    lab.check(p.grad, [0.0, 0.25],
              "0 at 0 (sqrt sees 1 there: 0 / (2·1) = 0, and the inner where passes 0); "
              "0.25 at 4")


lab.run(where_safe)


# %% [3] A masked loss over 0/0 entries
# A masked loss whose masked-out entries were 0/0 has the same NaN.
def masked_division(lab: Lab) -> None:
    """Group means sums / counts with an empty group (0/0), the empty group masked out of the \
loss"""
    sums = torch.tensor([2.0, 0.0], requires_grad=True)  # the second group is empty
    counts = torch.tensor([4.0, 0.0])
    means = sums / counts  # [0.5, 0/0 = NaN]
    loss = means[counts > 0].sum()  # only the non-empty group
    loss.backward()
    lab.check(loss, 0.5, "2 / 4: the NaN was masked out, the loss is finite")
    lab.check(sums.grad, [0.25, math.nan],
              "1/4; and for the empty group 0 / 0 = NaN: division's backward is g / counts")
    # Autograd mechanics, "Division by Zero in Autograd" (pytorch/pytorch
    # docs/source/notes/autograd.md): masking the output does not prevent it; keep the division by
    # zero out of the graph.
    safe_sums = torch.tensor([2.0, 0.0], requires_grad=True)
    safe_means = safe_sums / counts.clamp(min=1)  # an empty group divides by 1: 0 / 1 = 0
    safe_loss = safe_means[counts > 0].sum()
    safe_loss.backward()
    lab.check(safe_sums.grad, [0.25, 0.0],
              "the fix: never divide by the zero count, and the gradient is 0 there")


lab.run(masked_division)


# %% [4] Kinks: the gradients the documented rule picks
# The gradients at points where the derivative does not exist (relu, abs, sqrt, norm, a tie in
# max), checked against the documented rule in "Autograd mechanics" (Gradients for
# non-differentiable functions): which value the rule picks.
def gradient_at(function, values: list[float]) -> torch.Tensor:
    """d/dx function(x).sum() at x = values, by backward(), on the default device."""
    x = torch.tensor(values, requires_grad=True)
    function(x).sum().backward()
    return x.grad


def kinks(lab: Lab) -> None:
    """relu, abs, sqrt, norm and max at the points where their derivative does not exist"""
    # A subgradient of a convex f at a point p: a slope g with f(p + d) >= f(p) + g·d for every d
    # (a line through (p, f(p)) that stays under f); where f has a derivative, that is the only
    # one. Minimum norm: of all of them, the one closest to 0 ([5] checks the inequality).
    # Autograd mechanics, "Gradients for non-differentiable functions" (pytorch/pytorch
    # docs/source/notes/autograd.md), rules applied in order; 2: convex (at least locally) -> a
    # subgradient of minimum norm; 4: defined -> the gradient by continuity ("inf is possible
    # here, for example for sqrt(0)").
    relu_at_0 = gradient_at(torch.relu, [0.0])
    abs_at_0 = gradient_at(torch.abs, [0.0])
    sqrt_at_0 = gradient_at(torch.sqrt, [0.0])
    norm_at_0 = gradient_at(torch.linalg.vector_norm, [0.0, 0.0])
    max_of_tie = gradient_at(torch.max, [1.0, 1.0])
    leaky_at_0 = gradient_at(lambda x: torch.nn.functional.leaky_relu(x, 0.1), [0.0])
    lab.check(relu_at_0, [0.0],
              "rule 2: relu is convex; slopes 0 and 1 meet, subgradients [0, 1], min norm 0")
    lab.check(abs_at_0, [0.0], "rule 2: |x| is convex; subgradients [−1, 1], min norm 0")
    lab.check(sqrt_at_0, [math.inf],
              "rule 4, the docs' own example: 1/(2√x) → inf as x → 0⁺ "
              "(the right derivative)")
    lab.check(norm_at_0, [0.0, 0.0],
              "rule 2: ‖x‖ is convex; subgradients fill the unit ball, "
              "min norm the zero vector")
    # torch.max's docstring: over all dimensions, "gradients evenly distribute between equally max
    # values".
    lab.check(max_of_tie, [0.5, 0.5],
              "rule 2: max is convex; at a tie subgradients are (t, 1 − t), min norm (½, ½)")
    lab.check(leaky_at_0, [0.1],
              "leaky_relu's backward uses the negative slope at 0; below slope 1 that is also "
              "rule 2's min-norm subgradient of [0.1, 1]")


lab.run(kinks)


# %% [5] Where the rule is a choice, not mathematics
# Which values mathematics allows at a kink, which one the rule picks, and an op that picks
# another.
def is_subgradient(function, g: float, point: float = 0.0,
                   steps: tuple = (-1.0, -0.1, 0.1, 1.0)) -> bool:
    """f(point + d) >= f(point) + g·d for every step d tried: the subgradient inequality of a
    convex f."""
    return all(function(point + d) >= function(point) + g * d for d in steps)


def rule_is_a_choice(lab: Lab) -> None:
    """relu at 0: mathematics allows every slope in [0, 1]; three spellings of relu give three \
of them"""
    relu_allows = [g for g in (-0.5, 0.0, 0.5, 1.0, 1.5)
                   if is_subgradient(lambda v: max(v, 0.0), g)]
    lab.check(relu_allows, [0.0, 0.5, 1.0],
              "no derivative at 0, but any g in [0, 1] is a subgradient")
    zero = torch.zeros(1)
    spelled_relu = gradient_at(torch.relu, [0.0])
    spelled_maximum = gradient_at(lambda x: torch.maximum(x, zero), [0.0])
    spelled_max_dim = gradient_at(lambda x: torch.stack([x, zero]).max(dim=0).values, [0.0])
    lab.check(spelled_relu, [0.0], "relu(x) has one input: min norm over [0, 1] is 0 (rule 2)")
    # the dispatcher's schema of torch.maximum
    maximum_signature = str(torch.ops.aten.maximum.default._schema)
    lab.check(maximum_signature, "aten::maximum(Tensor self, Tensor other) -> Tensor",
              "two Tensor inputs, the signature of the docs' two-Tensor max example (max.Tensor)")
    lab.check(spelled_maximum, [0.5],
              "so the rule takes the min-norm joint subgradient over (x, y): (½, ½)")
    # torch.max's docstring: with a dim, "only propagate to the indexed element", and at a tie
    # "the indices of the first maximal value are returned" (here row 0, x).
    # Same function, same point: 0, 0.5 and 1 are all in [0, 1]. 0 and 0.5 are the rule applied
    # to each op's signature ("different dispatcher signatures can intentionally produce
    # different subgradients", pytorch/pytorch docs/source/notes/autograd.md); 1 is max(dim)'s
    # documented exception. None of them is a fact of mathematics.
    lab.check(spelled_max_dim, [1.0],
              "max(dim=0) sends all of the gradient to the index it returned: x's row")


lab.run(rule_is_a_choice)


# %% [6] The rule holds per elementary op, not per formula
# The rule holds per elementary op, not for a formula written by hand.
def norm_by_hand(lab: Lab) -> None:
    """sqrt((x * x).sum()) at x = 0: the same norm written by hand has a NaN gradient"""
    x = torch.tensor([0.0, 0.0], requires_grad=True)
    by_hand = torch.sqrt((x * x).sum())
    by_hand.backward()
    lab.check(by_hand, 0.0, "the same value as vector_norm")
    # The rule is applied to each elementary op ("we define the gradients of the elementary
    # operations"), so torch.linalg.vector_norm gets the min-norm subgradient [0, 0] ([4]), and a
    # composition does not.
    lab.check(x.grad, [math.nan, math.nan],
              "sqrt′(0) = inf (rule 4) times d(x·x)/dx = 2x = 0: 0 · inf = NaN")


lab.run(norm_by_hand)


# %% The end
TRIES = [
    Try("the same NaNs and kinks on CUDA: the rule is the same on every device",
        flags="--device cuda",
        needs_cuda=True),
    Try("the masked entry no longer reaches sqrt as 0: its gradient is 0, so the two NaN checks "
        "fail (by the chain rule and by backward())",
        edit=("root = torch.sqrt(p)", "root = torch.sqrt(torch.where(p > 0, p, 1.0))"),
        where=where_trap),
    Try("a small epsilon is another fix: sqrt′(1e-12) = 5e5 is finite, 5e5 · 0 = 0, so the NaN "
        "check fails",
        edit=("by_hand = torch.sqrt((x * x).sum())",
              "by_hand = torch.sqrt((x * x).sum() + 1e-12)"),
        where=norm_by_hand),
]
lab.finish(TRIES)

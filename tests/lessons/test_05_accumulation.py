"""05 accumulation: every value the lesson's checks saw (and the locals its observations left),
against an oracle written here: derivatives by hand, the micro-batch gradient in float64,
saved-element counts from the shapes, and SGD replayed in plain floats (with the gradient reset,
and summed). TRY_PROMISES: what each of the lesson's Try lines does (tests/lab/test_tries.py)."""

import math

import numpy as np
import pytest
import torch

from tests.support import ROOT, Promise, assert_caught, load_lesson, playground_section

lesson = load_lesson("05_gradient_computation_accumulation.py")

# The lesson's Try lines, in order: the exit code and the text each adds to the output.
TRY_PROMISES = [
    Promise(shows=("device cuda",)),
    Promise(exit=1, shows=("FAIL  w.grad",)),
    Promise(shows=("(-1.7)^k: |w| grows 1.7× a step", "lr·18 = 2.7 < 4, both roots on the unit circle")),
    Promise(shows=("(-3.5)^k: |w| grows 3.5× a step", "a real root of size 2: |w| grows 2× a step")),
]

MUTANTS = [
    ("05_gradient_computation_accumulation.py", "    y2 = 3 * x\n    # For x's gradient", "    y2 = 2 * x\n    # For x's gradient"),
    ("05_gradient_computation_accumulation.py", "    x.grad.zero_()\n    y2.backward()  # the second walk", "    y2.backward()  # the second walk"),
    # the three resets in [3], one at a time
    ("05_gradient_computation_accumulation.py", "    x.grad.zero_()  # in place: the same tensor, now 0\n", ""),
    ("05_gradient_computation_accumulation.py", "    x.grad = None  # drop it: the next backward stores a new tensor instead of adding\n", ""),
    ("05_gradient_computation_accumulation.py", "    optimizer.zero_grad()\n    after_zero_grad = x.grad", "    after_zero_grad = x.grad"),
    ("05_gradient_computation_accumulation.py", "mean() / k, x)", "mean(), x)"),
    ("05_gradient_computation_accumulation.py", "            other += tensor.numel()", "            other += 1"),
    ("05_gradient_computation_accumulation.py", "tensor.untyped_storage().data_ptr() == data.untyped_storage().data_ptr()",
     "tensor is data"),
    ("05_gradient_computation_accumulation.py", "    loss, full_in_x, full_new = saved_elements(lambda: ((w * x - y) ** 2).mean(), x)",
     "    loss, full_in_x, full_new = saved_elements(lambda: ((w * x - y) ** 2).mean(), y)"),
    ("05_gradient_computation_accumulation.py", "    growth_per_step = (late / early) ** (1 / (steps - 10))",
     "    growth_per_step = (late / early) ** (1 / steps)"),
    ("05_gradient_computation_accumulation.py", "    return max(abs((b + spread) / 2), abs((b - spread) / 2))",
     "    return abs((b + spread) / 2)"),
    ("05_gradient_computation_accumulation.py", "\"it settles at 0\" if abs(factor) < 1", "\"it settles at 0\" if factor < 1"),
    ("05_gradient_computation_accumulation.py", "            if reset:\n                optimizer.zero_grad()\n", ""),
    ("05_gradient_computation_accumulation.py", "(2 - a) * trajectory[-1] - trajectory[-2]", "(1 - a) * trajectory[-1]"),
    # [6]'s two gaps: the closed form one step off, and the summed run measured against the wrong run
    ("05_gradient_computation_accumulation.py", "closed_form = [factor**k for k in range(steps + 1)]",
     "closed_form = [factor**k for k in range(1, steps + 2)]"),
    ("05_gradient_computation_accumulation.py", "zip(summed, recurrence)", "zip(with_reset, recurrence)"),
]

# Written by a tester who had not read these tests, from the lessons and the package alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # ---------------------------------------------------------------- 05 accumulation
    # original_fixed(): dropped zero_() before the second walk: second = 10, not 3
    ('05_gradient_computation_accumulation.py', '    lab.check(x.grad, 7.0, "2x + 3")\n    x.grad.zero_()\n    y2.backward()  # the second walk', '    lab.check(x.grad, 7.0, "2x + 3")\n    y2.backward()  # the second walk'),
    # micro_batches(): full-batch loss summed instead of averaged: full_batch = n × the mean gradient
    ('05_gradient_computation_accumulation.py', 'lambda: ((w * x - y) ** 2).mean(), x)', 'lambda: ((w * x - y) ** 2).sum(), x)'),
    # three_resets(): zero_() where the lesson sets .grad = None: after_none = (True, 4.0, 4.0)
    ('05_gradient_computation_accumulation.py', '    x.grad = None  # drop it', '    x.grad.zero_()  # drop it'),
    # summed_gradient_steps(): the reset is applied in the wrong run: "reset" and "summed" trajectories swapped
    ('05_gradient_computation_accumulation.py', '            if reset:\n                optimizer.zero_grad()', '            if not reset:\n                optimizer.zero_grad()'),
    # summed_gradient_recurrence(): wrong recurrence coefficient (1 - a instead of 2 - a)
    ('05_gradient_computation_accumulation.py', 'trajectory.append((2 - a) * trajectory[-1] - trajectory[-2])', 'trajectory.append((1 - a) * trajectory[-1] - trajectory[-2])'),
]


def test_the_docstring_points_at_the_original_description():
    """Autograd Playground §2 holds the original example; the trainer's observation points ask the question."""
    assert "docs/original-description.ko.md, Autograd Playground §2" in " ".join(lesson.__doc__.split())
    section = playground_section(2)
    text = (ROOT / "docs" / "original-description.ko.md").read_text()
    assert "y1 = x ** 2" in section and "y2 = 3 * x" in section and "# 2x + 3 = 7" in section
    assert section.count("y2.backward()") == 2 and "x.grad.zero_()" in section
    points = text[text.index("### 관찰 포인트"):]
    assert "`.grad.zero_()`를 제거했을 때 발산 여부" in points.split("###")[1]  # "whether it diverges"


def test_original_as_written_adds_then_raises(lab):
    seen = lab.run(lesson.original_as_written)
    x = 2.0
    # d/dx x² + d/dx 3x, then 0 after zero_() and the failed call
    assert [g.item() for g in seen.every("x.grad")] == [pytest.approx(2 * x + 3), 0.0]
    assert seen["y2.grad_fn._saved_other"].item() == 3.0
    assert_caught(seen["error"], RuntimeError, "Trying to backward through the graph a second time")


def test_original_fixed_gives_7_then_3(lab):
    x = 2.0
    seen = lab.run(lesson.original_fixed)
    assert [g.item() for g in seen.every("x.grad")] == [
        pytest.approx(2 * x + 3), pytest.approx(3.0), pytest.approx(3.0)]


def test_three_resets(lab):
    seen = lab.run(lesson.three_resets)
    x = 2.0
    assert seen["after_zero_"] == (True, 0.0)  # same object, zeroed
    # A new tensor holding 2x (not 2x + 2x); the held one keeps 0 + 2x from the backward before.
    assert seen["after_none"] == (False, pytest.approx(2 * x), pytest.approx(2 * x))
    assert seen["after_zero_grad"] is None  # optimizer.zero_grad() sets None by default
    assert seen["after_zero_grad_in_place"] == (True, 0.0)


@pytest.mark.parametrize("k, n", [(4, 8), (2, 12)])
def test_micro_batches_add_up_to_the_full_batch(lab, k, n):
    seen = lab.run(lesson.micro_batches, k=k, n=n)
    x = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    y = 2 * x + 1
    terms = 2 * (0.5 * x - y) * x / n
    expected = terms.sum().item()  # d/dw mean((w x - y)²) at w = 0.5
    # float32 on every CPU: each term is rounded at most 8 times on its way (x from linspace, 2x + 1,
    # w x - y, the 2 and the 1/n of the backward, × x) and the n terms are added in an order that
    # depends on the SIMD width (n - 1 adds), so the gradient is within γ_(n+7)·Σ|terms| of the exact
    # one (Higham; γ_k = k·u/(1 − k·u), u = 2⁻²⁴): 1.0e-6 relative at n = 8, 1.3e-6 at n = 12.
    u = 2.0**-24
    bound = (n + 7) * u / (1 - (n + 7) * u) * terms.abs().sum().item()
    assert abs(seen["full_batch"].item() - expected) <= bound
    assert seen["w.grad"].item() == pytest.approx(expected, rel=1e-5)
    # mul saves x itself (for w's gradient), pow saves w x - y, a new tensor: one element per point each.
    assert (seen.names["full_in_x"], seen.names["full_new"]) == (n, n)
    assert seen["micro_saved"] == [(n // k, n // k)] * k


def test_saved_elements_tells_data_from_new_tensors():
    data = torch.linspace(-1.0, 1.0, 6)
    w = torch.tensor(0.5, requires_grad=True)
    # mul by a tensor that needs no gradient saves only that tensor, for w's gradient.
    assert lesson.saved_elements(lambda: (w * data).sum(), data)[1:] == (6, 0)
    assert lesson.saved_elements(lambda: (w * data[2:5]).sum(), data)[1:] == (3, 0)  # a view: data's memory
    assert lesson.saved_elements(lambda: (w * (data + 1)).sum(), data)[1:] == (0, 6)  # data + 1: a new tensor
    # The two tensors the lesson's loss saves, recorded here by a hook of this test: x and w x - y.
    x, y = data, 2 * data + 1
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.detach().clone()) or t, lambda t: t):
        ((w * x - y) ** 2).mean()
    assert sorted(t.tolist() for t in saved) == sorted([x.tolist(), (0.5 * x - y).tolist()])


def test_forgotten_reset_adds_18_each_step(lab):
    # d/dw (3w)² = 18w = 18 at w = 1, added once per step.
    seen = lab.run(lesson.forgotten_reset, steps=4)
    assert [seen[f"step {k}: w.grad"].item() for k in range(1, 5)] == [18.0, 36.0, 54.0, 72.0]


def relative_gap(run: list[float], oracle: list[float]) -> float:
    """max_k |run_k - oracle_k| / max_k |oracle_k|, as [6] reports it, against the test's oracle."""
    return max(abs(a - b) for a, b in zip(run, oracle, strict=True)) / max(abs(b) for b in oracle)


def assert_gaps(seen, lr: float) -> None:
    """The two gaps [6] prints: the float32 runs against SGD replayed here in float64, and small."""
    runs = seen.names["runs"]
    for name, reset in (("reset_gap", True), ("summed_gap", False)):
        oracle = relative_gap(runs["reset" if reset else "summed"], sgd_by_hand(lr, 30, reset=reset))
        assert seen[name] == pytest.approx(oracle, rel=1e-6, abs=1e-12) and seen[name] < 1e-4, name


def sgd_by_hand(lr: float, steps: int, reset: bool) -> list[float]:
    """Plain SGD on (3w)², gradient 18w, in floats: the gradient replaced each step, or summed."""
    w, grad, trajectory = 1.0, 0.0, [1.0]
    for _ in range(steps):
        grad = 18 * w if reset else grad + 18 * w
        w -= lr * grad
        trajectory.append(w)
    return trajectory


@pytest.mark.parametrize("lr", [0.05, 0.01, 0.15])
def test_summed_gradient_oscillates_without_growing(lab, lr):
    seen = lab.run(lesson.summed_gradient_steps, lr=lr, steps=30)
    runs = seen.names["runs"]
    assert runs["reset"] == pytest.approx(sgd_by_hand(lr, 30, reset=True), rel=1e-4, abs=1e-6)
    assert runs["summed"] == pytest.approx(sgd_by_hand(lr, 30, reset=False), rel=1e-4, abs=1e-5)
    assert_gaps(seen, lr)
    # Bounded and not settling: w_k = cos kθ + B sin kθ with cos θ = (2 - a)/2, w_1 = 1 - a (a = 18 lr),
    # so B = -(a/2)/sin θ and the amplitude is sqrt(1 + B²) = 2/sqrt(4 - a); the last 10 steps come near it.
    amplitude = 2 / math.sqrt(4 - 18 * lr)
    assert 0.95 * amplitude < max(abs(w) for w in runs["summed"][-10:]) <= amplitude * (1 + 1e-5)
    assert seen["growth_per_step"] == pytest.approx(1.0, abs=0.01)
    printed = lab.stream.getvalue()
    assert "< 4, both roots on the unit circle, so no decay and no growth" in printed
    # With the reset, w_k = (1 - 18 lr)^k: it settles for 18 lr < 2 (0.05, 0.01), grows for 0.15 (1.7× a step).
    if 18 * lr < 2:
        assert "it settles at 0" in printed and "grows" not in printed
    else:
        assert abs(runs["reset"][-1] / runs["reset"][-2]) == pytest.approx(abs(1 - 18 * lr), rel=1e-4)
        assert "|w| grows 1.7× a step" in printed and "settles at 0" not in printed


def test_above_lr_18_of_4_both_runs_grow_the_reset_one_faster(lab):
    lr = 0.25  # 18 lr = 4.5
    seen = lab.run(lesson.summed_gradient_steps, lr=lr, steps=30)
    runs = seen.names["runs"]
    assert runs["reset"] == pytest.approx(sgd_by_hand(lr, 30, reset=True), rel=1e-4)
    assert runs["summed"] == pytest.approx(sgd_by_hand(lr, 30, reset=False), rel=1e-4)
    assert_gaps(seen, lr)
    # With the reset: w_k = (1 - 4.5)^k = (-3.5)^k. Summed: r² + 2.5 r + 1 = (r + 2)(r + 0.5), so 2× a step.
    assert runs["reset"][-1] / runs["reset"][-2] == pytest.approx(-3.5, rel=1e-5)
    assert runs["summed"][-1] / runs["summed"][-2] == pytest.approx(-2.0, rel=1e-5)
    assert seen["growth_per_step"] == pytest.approx(2.0, rel=1e-4)
    printed = lab.stream.getvalue()
    assert "(-3.5)^k: |w| grows 3.5× a step" in printed and "a real root of size 2: |w| grows 2× a step" in printed
    assert "unit circle" not in printed and "settles at 0" not in printed


@pytest.mark.parametrize("lr_times_curvature", [0.9, 2.7, 4.5, 5.4])
def test_largest_root_size_against_numpy(lr_times_curvature):
    roots = np.roots([1.0, -(2 - lr_times_curvature), 1.0])
    assert lesson.largest_root_size(lr_times_curvature) == pytest.approx(max(abs(roots)), rel=1e-9)


@pytest.mark.parametrize("lr_times_curvature", [0.9, 3.6, 4.5])
def test_the_recurrence_matches_summed_sgd(lr_times_curvature):
    lr = lr_times_curvature / 18
    assert lesson.summed_gradient_recurrence(lr_times_curvature, 12) == pytest.approx(
        sgd_by_hand(lr, 12, reset=False), rel=1e-9, abs=1e-12)

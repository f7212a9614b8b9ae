"""07 clipping and scaling: every value the lesson's checks saw (and the locals its observations
left), against an oracle written here: the Euclidean norm by math.hypot, clipping as rescaling to
max_norm, clamping by min/max, the scale as a power of two, float16's largest value from its bit
layout, and SGD's update by hand. TRY_PROMISES: what each of the lesson's Try lines does
(tests/lab/test_tries.py)."""

import math

from tests.support import Promise, assert_caught, load_lesson

lesson = load_lesson("07_debugging_gradients_clipping_and_scaling.py")

# The lesson's Try lines, in order: the exit code and the text each adds to the output.
TRY_PROMISES = [
    Promise(shows=("device cuda",)),
    Promise(exit=1, shows=("FAIL  w.grad = [3.0, 4.0]",)),
    Promise(exit=1, shows=("FAIL  w = [-2.0, -3.0]", "FAIL  scaler.get_scale() = 8192.0")),
]

MUTANTS = [
    ("07_debugging_gradients_clipping_and_scaling.py", "    total_norm = clip_grad_norm_([w], max_norm=1.0)\n    lab.check",
     "    total_norm = clip_grad_norm_([w], max_norm=2.0)\n    lab.check"),
    ("07_debugging_gradients_clipping_and_scaling.py", "clip_grad_value_([w], clip_value=1.0)", "clip_grad_value_([w], clip_value=3.5)"),
    ("07_debugging_gradients_clipping_and_scaling.py", "error_if_nonfinite=True)", "error_if_nonfinite=False)"),
    ("07_debugging_gradients_clipping_and_scaling.py", "init_scale=65536.0)  # 2**16", "init_scale=1024.0)  # 2**16"),
    ("07_debugging_gradients_clipping_and_scaling.py", "    norm_seen = clip_grad_norm_([w], max_norm=1.0)  # still scaled",
     "    scaler.unscale_(optimizer)\n    norm_seen = clip_grad_norm_([w], max_norm=1.0)  # still scaled"),
    ("07_debugging_gradients_clipping_and_scaling.py",
     "    scaler.unscale_(optimizer)\n    norm_seen = clip_grad_norm_([w], max_norm=1.0)  # unscaled",
     "    norm_seen = clip_grad_norm_([w], max_norm=1.0)  # unscaled"),
    ("07_debugging_gradients_clipping_and_scaling.py", "    loss = (w.half() * inputs.half()).sum()",
     "    loss = (w * inputs).sum()"),
    ("07_debugging_gradients_clipping_and_scaling.py", "    scaler.update()  # a skipped step", "    pass  # a skipped step"),
]

# Written by a tester who had not read these tests, from the lessons and the package alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # ---------------------------------------------------------------- 07 clipping and scaling
    # clip_by_norm(): L1 norm instead of L2: total 7, grads [3/7, 4/7]
    ('07_debugging_gradients_clipping_and_scaling.py', '    total_norm = clip_grad_norm_([w], max_norm=1.0)\n    lab.check(total_norm, 5.0', '    total_norm = clip_grad_norm_([w], max_norm=1.0, norm_type=1.0)\n    lab.check(total_norm, 5.0'),
    # unscale_then_clip(): clip before unscale_: norm_seen 5·65536, w.grad 65536× too small
    ('07_debugging_gradients_clipping_and_scaling.py', '    scaler.unscale_(optimizer)\n    norm_seen = clip_grad_norm_([w], max_norm=1.0)  # unscaled: what max_norm means\n', '    norm_seen = clip_grad_norm_([w], max_norm=1.0)  # unscaled: what max_norm means\n    scaler.unscale_(optimizer)\n'),
    # overflow_skips_the_step(): update() dropped: the scale stays 65536
    ('07_debugging_gradients_clipping_and_scaling.py', '    scaler.update()  # a skipped step multiplies the scale by backoff_factor (default 0.5)\n', '\n'),
    # grad_scaler(): missing clone(): scaled aliases w.grad and reads [3, 4] after unscale_
    ('07_debugging_gradients_clipping_and_scaling.py', 'scaled = w.grad.clone()  # a copy', 'scaled = w.grad  # a copy'),
]

GRADS = (3.0, 4.0)  # d/dw sum(w * [3, 4])
SCALE = 2.0**16
NORM = math.hypot(*GRADS)


def as_list(t) -> list[float]:
    return t.detach().cpu().double().tolist()


def close(observed: list[float], expected: list[float], rel: float = 1e-6) -> bool:
    return len(observed) == len(expected) and all(math.isclose(o, e, rel_tol=rel) for o, e in zip(observed, expected))


def test_clip_by_norm_returns_the_norm_before_and_rescales_to_max_norm(lab):
    seen = lab.run(lesson.clip_by_norm)
    # Exact on every machine: 3² + 4² = 25 and √25 = 5 are exact in float32 in any order of the adds
    # (and √ is correctly rounded), so no CPU can round this norm differently. So is 65536 · 5 below.
    assert seen["total_norm"].item() == NORM == 5.0
    assert close(as_list(seen["w.grad"]), [g / NORM for g in GRADS])  # [0.6, 0.8], same direction, norm 1


def test_clip_by_value_clamps_each_entry(lab):
    seen = lab.run(lesson.clip_by_value)
    assert as_list(seen["w.grad"]) == [min(max(g, -1.0), 1.0) for g in GRADS]
    assert seen["returned"] is None


def test_nonfinite_norm_raises_with_the_flag_and_gives_nan_without(lab):
    seen = lab.run(lesson.nonfinite_norm)
    assert_caught(seen["error"], RuntimeError, "is non-finite, so it cannot be clipped")
    assert seen["total_norm"].item() == math.inf  # hypot(inf, 4)
    untouched, clipped = (as_list(g) for g in seen.every("w.grad"))
    assert untouched == [math.inf, GRADS[1]]  # the error came before any change
    assert math.isnan(clipped[0]) and clipped[1] == 0.0  # both multiplied by 1 / inf = 0


def test_grad_scaler_scales_unscales_once(lab):
    seen = lab.run(lesson.grad_scaler)
    assert_caught(seen["error"], RuntimeError, "unscale_() has already been called")
    assert seen["scaler.get_scale()"] == SCALE
    assert seen.names["scaler"].get_scale() == SCALE
    assert as_list(seen["scaled"]) == [SCALE * g for g in GRADS] == [196608.0, 262144.0]
    # and still, after unscale_: scaled is a copy, not another name for w.grad
    assert as_list(seen.names["scaled"]) == [SCALE * g for g in GRADS]
    assert [as_list(g) for g in seen.every("w.grad")] == [list(GRADS)] * 2


def test_clipping_before_unscale_applies_a_step_scale_times_too_small(lab):
    seen = lab.run(lesson.clip_before_unscale)
    assert seen["norm_seen"].item() == SCALE * NORM
    applied = [g / NORM / SCALE for g in GRADS]  # clipped to norm 1 in scaled units, then divided by the scale
    assert close(as_list(seen["w.grad"]), applied, rel=1e-4)
    assert close(as_list(seen.names["w"]), [1.0 - g for g in applied], rel=1e-6)  # SGD, lr = 1


def test_unscale_then_clip_applies_the_intended_step(lab):
    seen = lab.run(lesson.unscale_then_clip)
    assert math.isclose(seen["norm_seen"].item(), NORM, rel_tol=1e-6)
    clipped = [g / NORM for g in GRADS]
    assert close(as_list(seen["w.grad"]), clipped)
    assert close(as_list(seen["w"]), [1.0 - g for g in clipped])  # SGD, lr = 1: [0.4, 0.2]


def test_float16_overflow_skips_the_step_and_halves_the_scale(lab):
    seen = lab.run(lesson.overflow_skips_the_step)
    float16_max = (2 - 2.0**-10) * 2.0**15  # 10 fraction bits, largest exponent 15
    assert float16_max == 65504.0 and SCALE > float16_max
    assert seen["torch.finfo(torch.float16).max"] == float16_max
    assert seen["loss.grad"].item() == math.inf
    assert as_list(seen["w.grad"]) == [math.inf, math.inf]
    assert as_list(seen["w"]) == [1.0, 1.0]  # no step
    assert seen["scaler.get_scale()"] == SCALE * 0.5  # backoff_factor's default

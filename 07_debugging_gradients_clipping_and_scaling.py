"""07 · clipping and scaling: what clip_grad_norm_ returns, and why to unscale before clipping.

Gradient clipping by norm and by value, and what a non-finite norm does; then loss scaling with
torch.amp.GradScaler: why its scale must be undone before clipping, and what a float16 overflow
does to the step and the scale.
"""

# %% Setup
import math

import torch
from torch.nn.utils import clip_grad_norm_, clip_grad_value_

from tensor_features.lab import Lab, Try

lab = Lab.start("07 · clipping and scaling", __doc__, __name__)


# %% [1] clip_grad_norm_ returns the norm before clipping
# clip_grad_norm_ returns the norm before clipping and scales the gradients down to max_norm
# (when above it).
def clip_by_norm(lab: Lab) -> None:
    """Gradients [3, 4], clip_grad_norm_(max_norm=1.0): it returns 5.0 and leaves ≈ [0.6, 0.8]"""
    w = torch.tensor([1.0, 1.0], requires_grad=True)
    inputs = torch.tensor([3.0, 4.0])
    loss = (w * inputs).sum()  # d loss / dw = inputs = [3, 4]
    loss.backward()
    total_norm = clip_grad_norm_([w], max_norm=1.0)
    lab.check(total_norm, 5.0, "‖[3, 4]‖ = 5: the norm before clipping "
              "(clip_grad.py: 'Total norm of the parameter gradients')")
    # torch/nn/utils/clip_grad.py: grad * min(max_norm / (total_norm + 1e-6), 1)
    lab.check(w.grad, [3 / (5 + 1e-6), 4 / (5 + 1e-6)],
              "[3, 4] · 1 / (5 + 1e-6) ≈ [0.6, 0.8]: same direction")
    lab.check(w.grad.norm(), 1.0,
              "the norm after clipping is max_norm, to within 1e-6: 5 / (5 + 1e-6)",
              rtol=0.0, atol=1e-6)


lab.run(clip_by_norm)


# %% [2] clip_grad_value_ clamps each entry
# clip_grad_value_ clamps each entry, which can turn the direction.
def clip_by_value(lab: Lab) -> None:
    """Gradients [3, 4], clip_grad_value_(clip_value=1.0): each entry clamped to [-1, 1]"""
    w = torch.tensor([1.0, 1.0], requires_grad=True)
    inputs = torch.tensor([3.0, 4.0])
    (w * inputs).sum().backward()
    returned = clip_grad_value_([w], clip_value=1.0)
    lab.check(returned, None, "it returns nothing; the gradients are changed in place")
    lab.check(w.grad, [1.0, 1.0], "clamp(3) = clamp(4) = 1")
    lab.check(w.grad[1] / w.grad[0], 1.0,
              "the ratio 4/3 became 1: unlike clip_grad_norm_, the direction changed")


lab.run(clip_by_value)


# %% [3] error_if_nonfinite=True refuses an infinite norm
# error_if_nonfinite=True refuses an infinite norm, where the default turns the gradients
# [inf, 4] into [NaN, 0].
def nonfinite_norm(lab: Lab) -> None:
    """An inf in the gradients: error_if_nonfinite=True raises; the default turns them into \
[NaN, 0]"""
    w = torch.tensor([1.0, 1.0], requires_grad=True)
    inputs = torch.tensor([math.inf, 4.0])  # e.g. an overflowed feature
    (w * inputs).sum().backward()
    with lab.expect_error("is non-finite, so it cannot be clipped",
                          "the total norm is inf, and the flag asks for an error"):
        clip_grad_norm_([w], max_norm=1.0, error_if_nonfinite=True)
    lab.check(w.grad, [math.inf, 4.0], "the error came before any change")
    total_norm = clip_grad_norm_([w], max_norm=1.0)  # the default, error_if_nonfinite=False
    lab.check(total_norm, math.inf, "the norm is inf")
    lab.check(w.grad, [math.nan, 0.0], "scaled by 1 / (inf + 1e-6) = 0: inf · 0 = NaN, 4 · 0 = 0")


lab.run(nonfinite_norm)


# %% [4] GradScaler: scaled gradients, unscale_, and unscale_ twice
# torch.amp.GradScaler (it runs on the CPU too) scales the loss, so the gradients arrive
# multiplied by the scale, and unscale_ divides them back, once.
def grad_scaler(lab: Lab) -> None:
    """torch.amp.GradScaler with scale 65536: gradients [3, 4] arrive scaled; unscale_ divides \
them back, once"""
    w = torch.tensor([1.0, 1.0], requires_grad=True)
    inputs = torch.tensor([3.0, 4.0])
    optimizer = torch.optim.SGD([w], lr=0.1)
    # GradScaler is told its device by name ("cuda" if not): the default device does not reach it
    scaler = torch.amp.GradScaler(lab.device.type,
                                  init_scale=65536.0)  # 2**16, also the default (grad_scaler.py)
    loss = (w * inputs).sum()
    scaler.scale(loss).backward()  # backward from loss · 65536
    scaled = w.grad.clone()  # a copy: unscale_ will change w.grad in place
    lab.check(scaler.get_scale(), 65536.0, "the scale it started with")
    lab.check(scaled, [196608.0, 262144.0], "65536 · [3, 4]")
    scaler.unscale_(optimizer)  # divides the optimizer's gradients by the scale, in place
    lab.check(w.grad, [3.0, 4.0], "[196608, 262144] / 65536")
    with lab.expect_error("unscale_() has already been called",
                          "one unscale_ per optimizer until update() resets it (grad_scaler.py)"):
        scaler.unscale_(optimizer)
    lab.check(w.grad, [3.0, 4.0], "still [3, 4]: the second call changed nothing")


lab.run(grad_scaler)


# %% [5] The wrong order: clip, then step (which unscales)
# Clipping before unscale_ measures a norm 65536 times too large, so here the step applied is
# 65536 times smaller than intended.
def clip_before_unscale(lab: Lab) -> None:
    """Clipping the scaled gradients: max_norm 1 meets a norm of 5 · 65536"""
    w = torch.tensor([1.0, 1.0], requires_grad=True)
    inputs = torch.tensor([3.0, 4.0])
    optimizer = torch.optim.SGD([w], lr=1.0)
    scaler = torch.amp.GradScaler(lab.device.type, init_scale=65536.0)
    scaler.scale((w * inputs).sum()).backward()
    norm_seen = clip_grad_norm_([w], max_norm=1.0)  # still scaled: wrong
    scaler.step(optimizer)  # unscales (divides by 65536), then optimizer.step()
    scaler.update()
    lab.check(norm_seen, 5.0 * 65536,
              "clip_grad_norm_ measured the scaled norm, 65536 times the true 5")
    lab.check(w.grad, [0.6 / 65536, 0.8 / 65536],
              "clipped to norm 1 in scaled units, then divided by 65536", rtol=1e-4, atol=0.0)
    # pytorch/pytorch docs/source/notes/amp_examples.md, "Working with Unscaled Gradients":
    # clipping without unscaling makes "your requested threshold ... invalid".
    lab.check(w.grad.norm(), 1 / 65536, "so the gradient applied has norm 1/65536, not 1",
              rtol=1e-4, atol=0.0)


lab.run(clip_before_unscale)


# %% [6] The right order: unscale_, clip, step
# The right order: unscale_ first, then clip, then step: max_norm meets the true norm.
def unscale_then_clip(lab: Lab) -> None:
    """unscale_ first, then clip: max_norm 1 meets the true norm 5"""
    w = torch.tensor([1.0, 1.0], requires_grad=True)
    inputs = torch.tensor([3.0, 4.0])
    optimizer = torch.optim.SGD([w], lr=1.0)
    scaler = torch.amp.GradScaler(lab.device.type, init_scale=65536.0)
    scaler.scale((w * inputs).sum()).backward()
    scaler.unscale_(optimizer)
    norm_seen = clip_grad_norm_([w], max_norm=1.0)  # unscaled: what max_norm means
    # already unscaled this iteration: step does not divide again (amp_examples.md)
    scaler.step(optimizer)
    scaler.update()
    lab.check(norm_seen, 5.0, "the true norm")
    lab.check(w.grad, [0.6, 0.8], "clipped to norm 1, as asked")
    lab.check(w, [0.4, 0.2], "one SGD step with lr 1: [1, 1] − [0.6, 0.8]")


lab.run(unscale_then_clip)


# %% [7] A float16 overflow: step() skips the optimizer, update() halves the scale
# A float16 overflow makes step() skip the optimizer's step, and update() halves the scale.
def overflow_skips_the_step(lab: Lab) -> None:
    """Float16 forward, scale 65536: the scaled gradient overflows to inf, step() skips, \
update() halves the scale"""
    w = torch.tensor([1.0, 1.0], requires_grad=True)
    inputs = torch.tensor([3.0, 4.0])
    optimizer = torch.optim.SGD([w], lr=1.0)
    scaler = torch.amp.GradScaler(lab.device.type,
                                  init_scale=65536.0)  # 65536 > 65504, the largest float16
    loss = (w.half() * inputs.half()).sum()  # float16 arithmetic; w itself stays float32
    loss.retain_grad()
    scaler.scale(loss).backward()
    lab.check(torch.finfo(torch.float16).max, 65504.0, "the largest float16")
    lab.check(loss.grad, math.inf, "d(loss · 65536)/d loss = 65536 does not fit in float16: inf")
    lab.check(w.grad, [math.inf, math.inf], "inf · 3 and inf · 4, back in float32: still inf")
    scaler.step(optimizer)  # unscale_ finds the inf and skips optimizer.step()
    scaler.update()  # a skipped step multiplies the scale by backoff_factor (default 0.5)
    # torch/amp/grad_scaler.py: "If infs/NaNs are found, scaler.step(optimizer) skips the
    # underlying optimizer.step() (so the params themselves remain uncorrupted) and update()
    # multiplies the scale by backoff_factor."
    lab.check(w, [1.0, 1.0], "the weights were not touched")
    lab.check(scaler.get_scale(), 32768.0, "65536 · 0.5")


lab.run(overflow_skips_the_step)


# %% The end
TRIES = [
    Try("the same numbers on CUDA, with a CUDA GradScaler",
        flags="--device cuda",
        needs_cuda=True),
    Try("a max_norm above the norm leaves the gradients alone (the coefficient is clamped at 1), "
        "and the checks of the clipped values fail",
        edit=("clip_grad_norm_([w], max_norm=1.0)", "clip_grad_norm_([w], max_norm=10.0)"),
        where=clip_by_norm),
    Try("8192 · 4 = 32768 fits in float16: no inf, the step is taken, and the scale stays 8192, "
        "so the checks of a skipped step fail",
        edit=("init_scale=65536.0", "init_scale=8192.0"),
        where=overflow_skips_the_step),
]
lab.finish(TRIES)

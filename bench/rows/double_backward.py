"""Row 10: what the double backward costs: one epoch of --loss sobolev and --loss smooth against one
epoch of the original mse loop, on the same data (n points, degree 3), as a ratio.

A derivative loss pays three things the original loop does not: Φ is rebuilt from x every epoch
(f′ needs x in the graph), autograd.grad(f(x).sum(), x, create_graph=True) runs inside the forward,
and backward() then goes through that derivative's graph too. Row 10c's reference is mse computed
the same way (Φ rebuilt from x every epoch, one backward), so 10c's time minus its reference is
what the derivative term and its double backward add; 10c's reference minus 10a's is what
rebuilding Φ adds to the mse epoch.
"""

from __future__ import annotations

import math

import torch

from bench.table import Figure, Row
from tensor_features.trainer import fitting, model
from tensor_features.load_data import load_data
from tensor_features.utils import median_seconds

NUMBER = 10


def double_backward(device: torch.device, n: int, repeats: int, degree: int = 3) -> list[Row]:
    x, y = load_data(n, device=device)
    phi = model.make_features(x, degree)
    w0 = model.initial_weights(degree, 0, device)
    features = lambda inputs: model.make_features(inputs, degree)  # noqa: E731

    def epoch_ms(step) -> float:
        w = w0.clone().requires_grad_()
        return median_seconds(lambda: step(w), repeats=repeats, device=device) * 1e3

    original = epoch_ms(lambda w: fitting.manual_step(phi, y, w, 0.1))
    sobolev = epoch_ms(lambda w: fitting.derivative_step(model.Loss("sobolev", 1.0), features, x, y, w, 0.1))
    smooth = epoch_ms(lambda w: fitting.derivative_step(model.Loss("smooth", 0.1), features, x, y, w, 0.1))

    def rebuilt_mse_step(w):
        loss = model.mse(features(x) @ w, y)  # Φ from x inside the epoch, as the derivative losses do
        loss.backward()
        with torch.no_grad():
            w -= 0.1 * w.grad
            w.grad.zero_()

    rebuilt = epoch_ms(rebuilt_mse_step)
    what = f"n=2^{int(math.log2(n))}" if n & (n - 1) == 0 else f"n={n}"
    return [
        Row("10a", f"epoch {what}: --loss sobolev vs the original mse loop", "report",
            Figure(sobolev, original, "ms", note="ratio = the double backward's epoch over mse's")),
        Row("10b", f"epoch {what}: --loss smooth vs the original mse loop", "report", Figure(smooth, original, "ms")),
        Row("10c", f"epoch {what}: --loss sobolev vs mse with Φ rebuilt from x", "report",
            Figure(sobolev, rebuilt, "ms", note="time − reference: what the derivative term and its double backward add")),
    ]


def measure(device: torch.device, args) -> list[Row]:
    return double_backward(device, args.n, args.repeats)

"""Row 8: a Jacobian by forward mode (jacfwd, n JVPs) against reverse mode (jacrev, m VJPs) on lesson 08
forward_mode's tanh layers, a tall one ℝ⁴ → ℝ²⁰⁴⁸ and a wide one ℝ²⁰⁴⁸ → ℝ⁴: times as ratios, each mode's
reference being the other mode, and both Jacobians checked against diag(1 − tanh(W x + b)²) W.
"""

from __future__ import annotations

import torch
from torch.func import jacfwd, jacrev

from bench.table import Figure, Row
from tensor_features.lessons import load_lesson
from tensor_features.utils import median_seconds

NUMBER = 8
SMALL, BIG = 4, 2048  # the lesson's sizes: n ≪ m for the tall layer, n ≫ m for the wide one


def forward_reverse(device: torch.device, small: int = SMALL, big: int = BIG, repeats: int = 11) -> list[Row]:
    lesson = load_lesson("08_higher_order_forward_mode.py")
    rows = []
    for shape, (n, m) in {"tall": (small, big), "wide": (big, small)}.items():
        layer, x, weight, bias = lesson.tanh_layer(n, m, device)
        by_hand = (1 - torch.tanh(weight @ x + bias) ** 2)[:, None] * weight
        modes = {"jacfwd": jacfwd, "jacrev": jacrev}
        agrees = all(torch.allclose(mode(layer)(x), by_hand, rtol=1e-4, atol=1e-5) for mode in modes.values())
        ms = {name: median_seconds(lambda mode=mode: mode(layer)(x), repeats=repeats, device=device) * 1e3
              for name, mode in modes.items()}
        passes = {"jacfwd": f"{n} JVPs", "jacrev": f"{m} VJPs"}
        for name, other in (("jacfwd", "jacrev"), ("jacrev", "jacfwd")):
            figure = Figure(ms[name], ms[other], "ms", met=agrees)
            figure.note = f"{1 / figure.ratio:.1f}× faster" if figure.ratio < 1 else f"{figure.ratio:.1f}× slower"
            rows.append(Row(f"8{chr(ord('a') + len(rows))}",
                            f"{shape} ℝ^{n} → ℝ^{m}: {name} ({passes[name]}) vs {other} ({passes[other]})",
                            "agree; vs the other mode", figure))
    return rows


def measure(device: torch.device, args) -> list[Row]:
    return forward_reverse(device, repeats=args.repeats)

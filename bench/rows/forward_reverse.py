"""Row 8: jacfwd (n JVPs) against jacrev (m VJPs) on lesson 08 forward_mode's tanh layers, tall
ℝ⁴ → ℝ²⁰⁴⁸ and wide ℝ²⁰⁴⁸ → ℝ⁴; each mode's reference is the other (CPU: one thread, as in the lesson).

Both Jacobians are checked against diag(1 − tanh(W x + b)²) W: a row whose Jacobians disagree is broken.
"""

from __future__ import annotations

import torch
from torch.func import jacfwd, jacrev

from bench.table import Figure, Row
from tensor_features.lab.lessons import load_lesson
from tensor_features.utils import median_seconds

NUMBER = 8
SMALL, BIG = 4, 2048  # the lesson's sizes: n ≪ m for the tall layer, n ≫ m for the wide one


def forward_reverse(device: torch.device, small: int = SMALL, big: int = BIG, repeats: int = 11) -> list[Row]:
    """Rows 8a-8d. On the CPU they run on one thread, as the lesson times them (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _rows(device, small, big, repeats)
    finally:
        torch.set_num_threads(threads)


def _rows(device: torch.device, small: int, big: int, repeats: int) -> list[Row]:
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
            if device.type == "cpu":
                figure.note += " (1 thread)"
            rows.append(Row(f"8{chr(ord('a') + len(rows))}",
                            f"{shape} ℝ^{n} → ℝ^{m}: {name} ({passes[name]}) vs {other} ({passes[other]})",
                            "agree; vs the other mode", figure))
    return rows


def measure(device: torch.device, args) -> list[Row]:
    return forward_reverse(device, repeats=args.repeats)

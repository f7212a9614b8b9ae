"""Row 2: the Jacobian of a tanh layer three ways (lesson 05 vjp): times, and that they agree.

Timed as the lesson times them: the fastest of --repeats runs on one CPU thread."""

from __future__ import annotations

import torch

from bench.table import Figure, Row
from tensor_features.lab.lessons import load_lesson
from tensor_features.utils import fastest_seconds

NUMBER = 2


def jacobian(device: torch.device, size: int, repeats: int) -> list[Row]:
    vjp = load_lesson("05_gradient_computation_vjp.py")
    with torch.device(device):  # the lesson's layer is made on the default device
        layer, x, analytic = vjp.tanh_layer(size)
    methods = {
        "autograd.grad loop": vjp.jacobian_by_loop,
        "is_grads_batched=True": vjp.jacobian_by_batched_grad,
        "vmap(vjp)": vjp.jacobian_by_vmap_vjp,
    }
    rows, loop_seconds = [], None
    for name, method in methods.items():
        agrees = torch.allclose(method(layer, x), analytic, rtol=1e-4, atol=1e-5)  # diag(1 - y²) W
        seconds = fastest_seconds(lambda method=method: method(layer, x), device, repeats)
        loop_seconds = loop_seconds or seconds
        figure = Figure(seconds * 1e3, None if name.endswith("loop") else loop_seconds * 1e3, "ms", met=agrees)
        if figure.ratio is not None:
            figure.note = f"{1 / figure.ratio:.1f}× faster" if figure.ratio < 1 else f"{figure.ratio:.1f}× slower"
        figure.note = "; ".join(filter(None, [figure.note, "1 thread, fastest of N"]))
        rows.append(Row(f"2{chr(ord('a') + len(rows))}", f"Jacobian {size}×{size}: {name}",
                        "agree" if name.endswith("loop") else "agree; vs loop", figure))
    return rows


def measure(device: torch.device, args) -> list[Row]:
    return jacobian(device, args.size, args.repeats)

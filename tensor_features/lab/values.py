"""How the lab writes a value: the checks' lines (core.py) and the graph lens (graph.py) share it."""

from __future__ import annotations

from typing import Any

import torch


def format_value(value: Any) -> str:
    """A short, exact-enough text for an observed or expected value."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.numel() == 1 and value.dim() == 0:
            return format_value(value.item())
        if value.numel() <= 16:
            return format_value(value.cpu().tolist())
        shape = "×".join(str(s) for s in value.shape)
        return f"<{shape} {str(value.dtype).removeprefix('torch.')}>"
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        text = f"{value:.6g}"
        # As Python prints it: 8.0, not 8, so that a float is never mistaken for an int.
        return text + ".0" if text.lstrip("-").isdigit() else text
    if isinstance(value, torch.Size):
        return str(tuple(value))
    if isinstance(value, (list, tuple)):
        inner = ", ".join(format_value(v) for v in value)
        if isinstance(value, list):
            return f"[{inner}]"
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return str(value)

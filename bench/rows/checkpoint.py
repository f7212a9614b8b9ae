"""Row 7: activation checkpointing (lesson 06 saved tensors) on L layers of tanh(h @ Wᵀ), as L grows: memory kept for backward and forward+backward time, with √L segments (all but the last checkpointed) against none."""

# Each figure is checkpointed / plain, both measured in this run. Memory, on the CPU: the bytes of
# the distinct storages the forward packs for backward (counted with saved_tensors_hooks; the
# weights are left out, they exist either way). On CUDA: the peak of torch.cuda.max_memory_allocated
# during one step, above what was allocated before it. Time: the median of a forward+backward step,
# the plain and the checkpointed steps taking turns.
# With √L segments (torch.utils.checkpoint.checkpoint_sequential, use_reentrant=False) the forward
# keeps each checkpointed segment's input and the last segment's activations, and backward runs the
# checkpointed segments' forwards again (tests/lessons/test_06_saved_tensors.py counts both).

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch
from torch.autograd.graph import saved_tensors_hooks
from torch.utils.checkpoint import checkpoint_sequential

from bench.measure import MB
from bench.table import Figure, Row
from tensor_features.lab.lessons import load_lesson
from tensor_features.utils import synchronize

NUMBER = 7
LAYER_COUNTS = (4, 16, 64)
WIDTH = 128  # each layer is WIDTH → WIDTH
BATCH = 1024  # rows of h: one activation is BATCH × WIDTH float32 = 0.5 MiB, a weight 64 KiB


@dataclass
class CheckpointCost:
    """One layer count, plain and checkpointed: memory (bytes) and a median step (seconds)."""

    layers: int
    segments: int
    plain_bytes: int
    checkpointed_bytes: int
    plain_seconds: float
    checkpointed_seconds: float
    memory: str  # what the bytes are: "saved" (CPU count) or "peak" (CUDA allocator)


def segments_for(layers: int) -> int:
    """√L segments, the usual choice: about √L segment inputs plus one segment's activations kept."""
    return max(1, math.isqrt(layers))


def forward(layers: torch.nn.Sequential, x: torch.Tensor, segments: int) -> torch.Tensor:
    """The plain forward (segments = 0) or the checkpointed one."""
    if segments == 0:
        return layers(x)
    return checkpoint_sequential(layers, segments, x, use_reentrant=False)


def saved_activation_bytes(layers: torch.nn.Sequential, x: torch.Tensor, segments: int) -> int:
    """Bytes of the distinct storages the forward packs for backward, the weights' storages left out.

    Counted by storage, not by pack call: tanh's output is packed again as the next layer's input.
    """
    weights = {p.untyped_storage().data_ptr() for p in layers.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with saved_tensors_hooks(pack, lambda tensor: tensor):
        forward(layers, x, segments)
    return sum(storages.values())


def step(layers: torch.nn.Sequential, x: torch.Tensor, segments: int) -> None:
    """One forward and backward, from no gradients."""
    layers.zero_grad(set_to_none=True)
    x.grad = None
    forward(layers, x, segments).sum().backward()


def peak_cuda_bytes(layers: torch.nn.Sequential, x: torch.Tensor, segments: int) -> int:
    """Peak CUDA memory allocated during one step, above what was allocated before it."""
    layers.zero_grad(set_to_none=True)
    x.grad = None
    synchronize(x.device)
    start = torch.cuda.memory_allocated(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    forward(layers, x, segments).sum().backward()
    synchronize(x.device)
    return torch.cuda.max_memory_allocated(x.device) - start


def interleaved_medians(steps, repeats: int, device: torch.device) -> list[float]:
    """Median seconds of each step, the steps taking turns (one warm-up each), so that a shared
    machine's load drifts over both alike rather than over one of them."""
    for fn in steps:
        fn()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for fn, seconds in zip(steps, times):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            seconds.append(time.perf_counter() - start)
    return [statistics.median(seconds) for seconds in times]


def checkpoint_cost(device: torch.device, layers: int, width: int, batch: int, repeats: int) -> CheckpointCost:
    lesson = load_lesson("06_extending_autograd_saved_tensors.py")
    torch.manual_seed(0)
    model = lesson.tanh_layers(layers, width, device)
    x = torch.randn(batch, width, device=device, requires_grad=True)
    segments = segments_for(layers)
    if device.type == "cuda":
        step(model, x, 0)  # warm up both paths first: kernels and library workspaces are allocated once
        step(model, x, segments)
        memory = "peak"
        plain_bytes, checkpointed_bytes = (peak_cuda_bytes(model, x, s) for s in (0, segments))
    else:
        memory = "saved"
        plain_bytes, checkpointed_bytes = (saved_activation_bytes(model, x, s) for s in (0, segments))
    plain_seconds, checkpointed_seconds = interleaved_medians(
        [lambda: step(model, x, 0), lambda: step(model, x, segments)], repeats, device)
    return CheckpointCost(layers, segments, plain_bytes, checkpointed_bytes, plain_seconds, checkpointed_seconds,
                          memory)


def checkpoint_rows(device: torch.device, counts=LAYER_COUNTS, width: int = WIDTH, batch: int = BATCH,
                    repeats: int = 11) -> list[Row]:
    rows = []
    for cost in (checkpoint_cost(device, count, width, batch, repeats) for count in counts):
        first = chr(ord("a") + len(rows))
        what = f"checkpoint, L={cost.layers} layers {batch}×{width}, {cost.segments} segments"
        if cost.memory == "peak":
            memory_note = "peak CUDA memory allocated during the step"
        else:
            memory_note = "saved activation bytes (saved_tensors_hooks)"
        memory = Figure(cost.checkpointed_bytes / MB, cost.plain_bytes / MB, "MiB",
                        met=cost.checkpointed_bytes < cost.plain_bytes, note=memory_note)
        step_time = Figure(cost.checkpointed_seconds * 1e3, cost.plain_seconds * 1e3, "ms",
                      note="a forward+backward step; checkpointed adds the recompute and its own overhead")
        rows.append(Row(f"7{first}", f"{what}: memory for backward", "< 1", memory))
        rows.append(Row(f"7{chr(ord(first) + 1)}", f"{what}: step time", "report", step_time))
    return rows


def measure(device: torch.device, args) -> list[Row]:
    return checkpoint_rows(device, repeats=args.repeats)

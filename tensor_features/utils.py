"""Small helpers shared by the lessons, the trainer and the bench: the original description's
feature_map (where it puts it: ``from utils import feature_map``), timing, and writing an image
grid. (Command-line parsing and the device choice live in cli.py; the other feature maps in model.py.)

Nothing here hides an autograd event; these are plumbing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def feature_map(x: torch.Tensor, degree: int = 3) -> torch.Tensor:
    """Monomial features [x, x**2, ..., x**degree] of a column x of shape (n, 1).

    With degree=3 this is exactly the original ``torch.cat([x, x**2, x**3], dim=1)``.
    There is no constant column, as in the original: the bias is left out on purpose.
    """
    if degree < 1:
        raise ValueError(f"degree must be >= 1, got {degree}")
    return torch.cat([x**k for k in range(1, degree + 1)], dim=1)


def stderr_line(message: str) -> None:
    print(message, file=sys.stderr)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, repeats: int = 5, warmup: int = 1, device: torch.device | str = "cpu") -> float:
    """Median wall time of fn() over `repeats` runs after `warmup` untimed runs."""
    import statistics
    import time

    device = torch.device(device)
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fastest_seconds(fn, device: torch.device | str = "cpu", repeats: int = 5) -> float:
    """The fastest of `repeats` runs of fn() after one warm-up, on one CPU thread.

    The fastest run, as the standard library's timeit.Timer.repeat docstring advises: slower
    runs "are typically not caused by variability in Python's speed, but by other processes
    interfering with your timing accuracy". One thread, so that the figure does not depend on
    how many cores other processes leave free. The thread count is restored afterwards.
    """
    import time

    device = torch.device(device)
    threads, tracer = torch.get_num_threads(), sys.gettrace()
    torch.set_num_threads(1)
    sys.settrace(None)  # the lab traces which lines of an observation ran: not inside a timing
    try:
        fn()
        times = []
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - start)
        return min(times)
    finally:
        torch.set_num_threads(threads)
        sys.settrace(tracer)


def display_images(batch: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Write a uint8 batch [N, 3, H, W] as one grid image at path (no display needed), whole or
    not at all: it is written under a temporary name and renamed when complete (Ctrl-C included)."""
    from PIL import Image
    from torchvision.utils import make_grid, save_image  # torchvision only for images

    from tensor_features.cli import whole_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_format = Image.registered_extensions().get(path.suffix.lower(), "PNG")  # the name ends in .part
    with whole_file(path) as partial:
        save_image(make_grid(batch.float() / 255, nrow=nrow, padding=2), partial, format=image_format)
    return path

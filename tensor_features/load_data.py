"""Data for the lab: the seed's synthetic regression problem (images come in load_cat_images)."""

from __future__ import annotations

import torch


def load_data(n: int = 100, noise: float = 0.1, seed: int = 0, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """n points x on [-1, 1] as a column (n, 1) and targets y = x² + noise · N(0, 1).

    The seed's ``load_data`` with the randomness made reproducible: the noise comes from its
    own generator, so the same seed gives the same data on every run and device.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.linspace(-1, 1, n, dtype=dtype).unsqueeze(1)
    y = x**2 + noise * torch.randn(x.shape, generator=generator, dtype=dtype)
    return x.to(device), y.to(device)

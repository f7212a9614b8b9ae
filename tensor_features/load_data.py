"""Data for the lab: the original synthetic regression problem (images come in load_cat_images)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch


def load_data(n: int = 100, noise: float = 0.1, seed: int = 0, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """n points x on [-1, 1] as a column (n, 1) and targets y = x² + noise · N(0, 1).

    The original ``load_data`` with the randomness made reproducible: the noise comes from its
    own generator, so the same seed gives the same data on every run and device.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.linspace(-1, 1, n, dtype=dtype).unsqueeze(1)
    # y = x**2 + noise · N(0, 1), built in place: at n = 2**22 every temporary is 16 MB.
    y = torch.randn(x.shape, generator=generator, dtype=dtype).mul_(noise).add_(x**2)
    return x.to(device), y.to(device)


EMBEDDED_CAT = Path(__file__).resolve().parent / "assets" / "chelsea.png"


def load_cat_images(n: int = 16, root: str | os.PathLike | None = None) -> torch.Tensor:
    """Up to n cat photos as a uint8 tensor [N, 3, H, W].

    From the cache that ``python -m tensor_features.download`` fills (CIFAR-10 cats, 32×32);
    when nothing was downloaded, from the photo that ships with the package (one 300×451
    image, CC0), announced in one line so the learner knows which data they see.
    """
    from tensor_features.download import CATS_FILE, data_dir

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    cached = data_dir(root) / CATS_FILE
    if cached.exists():
        return torch.load(cached, weights_only=True)[:n]
    from torchvision.io import ImageReadMode, decode_png, read_file  # torchvision only for images

    print(f"no downloaded images in {cached.parent}; using the embedded photo {EMBEDDED_CAT.name} "
          "(see tensor_features/assets/README.md)", file=sys.stderr)
    image = decode_png(read_file(str(EMBEDDED_CAT)), mode=ImageReadMode.RGB)
    # decode_png returns a view of H×W×C pixels; copy to the plain [N, C, H, W] layout the cache has.
    return image.unsqueeze(0).contiguous()

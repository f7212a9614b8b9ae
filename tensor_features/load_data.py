"""Data for the lab: the original synthetic regression problem (images come in load_cat_images)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

# Where `python -m tensor_features.download` caches the cats, and where loading looks for them
# (here, so that loading needs nothing from the download module).
DATA_ENV = "TENSOR_FEATURES_DATA"
CATS_FILE = "cifar10_cats.pt"


def data_dir(dest: str | os.PathLike | None = None) -> Path:
    """--dest, else $TENSOR_FEATURES_DATA, else ./data under the working directory."""
    return Path(dest or os.environ.get(DATA_ENV) or "data")


def load_data(n: int = 100, noise: float = 0.1, seed: int = 0, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """n points x on [-1, 1] as a column (n, 1) and targets y = x² + noise · N(0, 1).

    The original ``load_data`` with the randomness made reproducible: the noise comes from its
    own generator, so the same seed gives the same data on every run and device.
    """
    generator = torch.Generator().manual_seed(seed)
    # Made on the CPU, where the generator is, whatever the default device (a lesson's lab sets
    # it), then moved: the same numbers on every device.
    x = torch.linspace(-1, 1, n, dtype=dtype, device="cpu").unsqueeze(1)
    # y = x**2 + noise · N(0, 1), built in place: at n = 2**22 every temporary is 16 MB.
    y = torch.randn(x.shape, generator=generator, dtype=dtype, device="cpu").mul_(noise).add_(x**2)
    return x.to(device), y.to(device)


EMBEDDED_CAT = Path(__file__).resolve().parent / "assets" / "chelsea.png"
CAT_SIZE = 32  # the side of a CIFAR-10 image; the crops of the embedded photo are cut to the same size


def read_cached_cats(path: str | os.PathLike) -> torch.Tensor:
    """The cats file that the download writes, checked: uint8 [N, 3, 32, 32] with N >= 1.

    ValueError, saying what is wrong, for a file that is truncated, garbage, or holds something else.
    """
    try:
        images = torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load fails in many ways on a bad file; each means "unreadable"
        raise ValueError(f"{path} cannot be read ({type(err).__name__})") from None
    if not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4
            and images.shape[1:] == (3, CAT_SIZE, CAT_SIZE) and len(images) > 0):
        raise ValueError(f"{path} does not hold uint8 images [N, 3, {CAT_SIZE}, {CAT_SIZE}]")
    return images


def _cache_problem(cached: Path) -> str | None:
    """Why the cats file cannot be used (it is there but unreadable), or None."""
    try:
        read_cached_cats(cached)
    except ValueError as err:
        return str(err)
    return None


def cat_images_source(root: str | os.PathLike | None = None) -> str:
    """In words, where ``load_cat_images(root=root)`` takes its images from (for the learner to read)."""

    cached = data_dir(root) / CATS_FILE
    if cached.exists():
        problem = _cache_problem(cached)
        if problem is None:
            return f"CIFAR-10 cats from {cached}"
        # A cut-off or foreign file: said in one line, with the command that rebuilds it.
        return (f"random crops and flips of one photo, {EMBEDDED_CAT.name} ({problem}; "
                "python -m tensor_features.download rebuilds it)")
    folder = cached.parent if cached.parent.is_absolute() else os.path.join(os.curdir, cached.parent)  # ./data
    return f"random crops and flips of one photo, {EMBEDDED_CAT.name} (no CIFAR-10 download in {folder})"


def load_cat_images(n: int = 16, root: str | os.PathLike | None = None, seed: int = 0) -> torch.Tensor:
    """n cat images as a uint8 tensor [n, 3, 32, 32] (fewer only if a download holds fewer).

    From the cache that ``python -m tensor_features.download`` fills: the first n CIFAR-10 cats.
    When nothing was downloaded: n distinct crops of the one photo that ships with the package
    (chelsea.png, CC0), each a random crop (a quarter to all of its area, aspect 3:4 to 4:3)
    resized to 32×32 and flipped left-right half of the time, by torchvision.transforms.v2.
    They are crops of one photo, not n photos. The same seed gives the same crops, and the
    global random state is left as it was (the draws happen inside torch.random.fork_rng).
    ``cat_images_source(root)`` says which of the two a call returns. A cache that cannot be read
    (truncated, garbage, not uint8 [N, 3, 32, 32]) counts as none, and cat_images_source says why.
    """

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    cached = data_dir(root) / CATS_FILE
    if cached.exists():
        with contextlib.suppress(ValueError):  # an unreadable cache counts as none (cat_images_source says why)
            return read_cached_cats(cached)[:n]
    from PIL import Image  # torchvision's own dependency; its decode_png is deprecated since 0.29
    from torchvision.transforms import v2  # torchvision only for images

    with Image.open(EMBEDDED_CAT) as file:
        photo = v2.functional.pil_to_tensor(file.convert("RGB"))  # uint8 [3, 300, 451]
    augment = v2.Compose([
        v2.RandomResizedCrop(CAT_SIZE, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
        v2.RandomHorizontalFlip(p=0.5),
    ])
    crops: list[torch.Tensor] = []
    seen: set[bytes] = set()
    with torch.random.fork_rng(devices=[]):  # v2 draws from the global generator; restore it after
        torch.manual_seed(seed)
        while len(crops) < n:
            crop = augment(photo)
            key = crop.numpy().tobytes()
            if key not in seen:  # two draws can round to the same crop; keep the crops distinct
                seen.add(key)
                crops.append(crop)
    return torch.stack(crops)

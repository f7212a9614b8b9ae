"""load_data and initial_weights draw from their own CPU generators: the same numbers whatever
the default device (a lesson's lab makes its device the default inside an observation)."""

import torch

from tensor_features.load_data import load_data
from tensor_features.trainer.model import initial_weights

MUTANTS = [
    ("tensor_features/load_data.py", 'generator=generator, dtype=dtype, device="cpu")',
     "generator=generator, dtype=dtype)"),
    ("tensor_features/trainer/model.py", 'generator=generator, device="cpu").to(device)',
     "generator=generator).to(device)"),
]


def test_the_same_data_under_another_default_device():
    x, y = load_data(7, 0.1, 3)
    # "meta" stands in for a GPU: a default device other than the CPU, with no memory behind it.
    with torch.device("meta"):
        x_meta, y_meta = load_data(7, 0.1, 3)
    assert torch.equal(x_meta, x) and torch.equal(y_meta, y)  # same operations, same order: exact


def test_the_data_is_the_description_s():
    # y = x² + 0.1·N(0, 1) from seed 0, x on [-1, 1]: the noise is exactly the seeded draw.
    x, y = load_data(5, 0.1, 0)
    assert torch.equal(x.squeeze(1), torch.linspace(-1, 1, 5))
    noise = torch.randn(5, 1, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(y, x**2 + 0.1 * noise, rtol=0, atol=1e-7)


def test_the_same_initial_weights_under_another_default_device():
    w = initial_weights(3, seed=0, device="cpu")
    with torch.device("meta"):
        w_meta = initial_weights(3, seed=0, device="cpu")
    assert torch.equal(w_meta, w)
    # The original's w ~ N(0, 1), from a generator seeded with seed + 1.
    assert torch.equal(w, torch.randn(3, 1, generator=torch.Generator().manual_seed(1)))

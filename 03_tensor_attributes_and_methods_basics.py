"""03 · tensor attributes: what a tensor carries besides its numbers.

Every tensor has data, a shape, a dtype and a device; for autograd it also has
requires_grad, is_leaf and grad_fn, and these depend on how the tensor was made. The
lesson makes tensors in different ways and reads all of them, then shows the rules that
surprise people: dtype promotion, .to() of a leaf giving a non-leaf, and how tensors and
NumPy arrays share (or refuse to share) memory.
"""

# %% Setup
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # find tensor_features when run from elsewhere

import numpy as np
import torch

from tensor_features.lab import Lab


# %% [1] The attributes of tensors made in different ways
def attributes(lab: Lab) -> dict:
    lab.show("a = torch.tensor([[1., 2.], [3., 4.]]); w = torch.ones(2, requires_grad=True); y = a @ w")
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]], device=lab.device)
    w = torch.ones(2, requires_grad=True, device=lab.device)
    y = a @ w
    lab.check("a.shape, a.dtype", (a.shape, a.dtype), (torch.Size([2, 2]), torch.float32),
              "Python floats become float32, the default dtype")
    lab.check("a.device.type", a.device.type, lab.device.type, "created where we asked")
    lab.check("a: requires_grad, is_leaf, grad_fn", (a.requires_grad, a.is_leaf, a.grad_fn),
              (False, True, None), "data: a leaf that autograd ignores")
    lab.check("w: requires_grad, is_leaf, grad_fn", (w.requires_grad, w.is_leaf, w.grad_fn),
              (True, True, None), "a parameter: a leaf whose .grad will be filled")
    lab.check("y: requires_grad, is_leaf", (y.requires_grad, y.is_leaf), (True, False),
              "made by an op from w: a node in the graph")
    lab.check("type(y.grad_fn)", type(y.grad_fn).__name__, "MvBackward0", "the op that made y (matrix @ vector)")
    lab.check("y.data", y, [3.0, 7.0], "[1+2, 3+4]")
    return {"a": a, "w": w, "y": y}


# %% [2] dtype promotion
def dtype_promotion(lab: Lab) -> dict:
    lab.show("i = torch.tensor([1, 2, 3]); i * 1.5; i + torch.tensor(1.0, dtype=float64); half + float32")
    i = torch.tensor([1, 2, 3], device=lab.device)
    half = torch.ones(2, dtype=torch.float16, device=lab.device)
    results = {
        "int": i.dtype,
        "int * python float": (i * 1.5).dtype,
        "int + 0-dim float64": (i + torch.tensor(1.0, dtype=torch.float64, device=lab.device)).dtype,
        "float16 + 0-dim float64": (half + torch.tensor(1.0, dtype=torch.float64, device=lab.device)).dtype,
        "float16 + float32 vector": (half + torch.ones(2, device=lab.device)).dtype,
    }
    lab.check("torch.tensor([1, 2, 3]).dtype", results["int"], torch.int64, "Python ints become int64")
    lab.check("(i * 1.5).dtype", results["int * python float"], torch.float32,
              "a float scalar lifts ints to the default float")
    lab.check("(i + 0-dim float64).dtype", results["int + 0-dim float64"], torch.float64,
              "a 0-dim tensor of a higher kind decides")
    lab.check("(half + 0-dim float64).dtype", results["float16 + 0-dim float64"], torch.float16,
              "same kind: the 0-dim tensor does not widen")
    lab.check("(half + float32 vector).dtype", results["float16 + float32 vector"], torch.float32,
              "two dimensioned tensors: the wider wins")
    return results


# %% [3] .to() of a leaf makes a non-leaf; dtype= at creation keeps a leaf
def to_makes_non_leaf(lab: Lab) -> dict:
    lab.show("w = torch.ones(2, requires_grad=True).to(torch.float64)   vs   torch.ones(2, dtype=float64, requires_grad=True)")
    converted = torch.ones(2, requires_grad=True, device=lab.device).to(torch.float64)
    created = torch.ones(2, dtype=torch.float64, requires_grad=True, device=lab.device)
    # .to() is an op: the float64 copy remembers the float32 leaf it came from.
    lab.check("converted: is_leaf, grad_fn", (converted.is_leaf, type(converted.grad_fn).__name__),
              (False, "ToCopyBackward0"), "a copy made by an op")
    lab.check("created: is_leaf, grad_fn", (created.is_leaf, created.grad_fn), (True, None),
              "made directly with the dtype")
    (converted.sum() + created.sum()).backward()
    with lab.expect_warning("is not a leaf Tensor", "an optimiser given `converted` would see no grad"):
        converted_grad = converted.grad
    lab.check("converted.grad, created.grad", (converted_grad, created.grad), (None, [1.0, 1.0]),
              "only the leaf keeps .grad")
    same = torch.ones(2, requires_grad=True)
    lab.check(".to(its own dtype and device) is self", same.to(torch.float32) is same, True,
              "no copy needed, so no new node")
    return {"converted": converted, "created": created}


# %% [4] NumPy: refused while tracked, shared when converted
def numpy_interop(lab: Lab) -> dict:
    lab.show("w = torch.ones(2, requires_grad=True); w.numpy(); w.detach().numpy(); torch.from_numpy(n)")
    w = torch.ones(2, requires_grad=True)  # NumPy lives on the CPU
    with lab.expect_error("Can't call numpy() on Tensor that requires grad",
                          "NumPy cannot record a graph; detach first") as caught:
        w.numpy()
    array = w.detach().numpy()
    lab.check("w.detach().numpy()", array.tolist(), [1.0, 1.0], "the same memory, without history")

    numbers = np.zeros(3, dtype=np.float32)
    shared = torch.from_numpy(numbers)  # wraps the array's buffer: no copy
    copied = torch.tensor(numbers)  # torch.tensor always copies
    numbers[0] = 5.0
    lab.check("torch.from_numpy(n) after n[0] = 5", shared, [5.0, 0.0, 0.0], "shares memory with n")
    lab.check("torch.tensor(n) after n[0] = 5", copied, [0.0, 0.0, 0.0], "a copy, taken before the write")
    shared[1] = 7.0
    lab.check("n after shared[1] = 7", numbers.tolist(), [5.0, 7.0, 0.0], "both directions")
    return {"array": array, "shared": shared, "copied": copied, "error": caught.error}


# %% [5] A real image batch (with --images PATH)
def image_batch(lab: Lab, grid_path: str, root: str | None = None) -> dict:
    from tensor_features.load_data import load_cat_images  # torchvision only for this observation
    from tensor_features.utils import display_images

    lab.show("batch = load_cat_images(16); batch.permute(0, 2, 3, 1); batch.float() / 255, per-channel mean/std")
    batch = load_cat_images(16, root=root).to(lab.device)
    n, channels, height, width = batch.shape
    lab.check("batch.dtype, channels", (batch.dtype, channels), (torch.uint8, 3), "photos are bytes, RGB")
    lab.check("min >= 0 and max <= 255", (batch.min().item() >= 0, batch.max().item() <= 255), (True, True),
              f"uint8 range; this batch spans {batch.min().item()}..{batch.max().item()}")
    lab.note(f"layout [N, C, H, W] = {list(batch.shape)}: PyTorch keeps channels before pixels")
    channels_last = batch.permute(0, 2, 3, 1)  # [N, H, W, C], what image viewers expect
    lab.check("permute(0, 2, 3, 1): contiguous, same storage",
              (channels_last.is_contiguous(), channels_last.data_ptr() == batch.data_ptr()), (False, True),
              "a view with reordered strides, no copy")
    scaled = batch.float() / 255  # a copy: uint8 cannot hold fractions
    mean = scaled.mean(dim=(0, 2, 3), keepdim=True)
    std = scaled.std(dim=(0, 2, 3), keepdim=True)
    normalized = (scaled - mean) / std
    lab.check("normalized per-channel mean", normalized.mean(dim=(0, 2, 3)), [0.0, 0.0, 0.0],
              "(x - mean) / std per channel", atol=1e-4)
    lab.check("normalized per-channel std", normalized.std(dim=(0, 2, 3)), [1.0, 1.0, 1.0],
              "unit spread per channel", atol=1e-4)
    path = display_images(batch.cpu(), grid_path)
    lab.note(f"wrote the grid of {n} image(s), {height}×{width} each, to {path}")
    return {"batch": batch, "normalized": normalized, "path": path}


# %% Run
def main(argv: list[str] | None = None) -> int:
    lab = Lab.from_argv(
        "03 · tensor attributes", __doc__, argv,
        add_arguments=lambda parser: parser.add_argument(
            "--images", metavar="PNG",
            help="also inspect a real cat-photo batch (downloaded CIFAR-10 cats, else the embedded "
                 "photo) and write its grid to this PNG path"),
    )
    attributes(lab)
    dtype_promotion(lab)
    to_makes_non_leaf(lab)
    numpy_interop(lab)
    if lab.args.images:
        image_batch(lab, lab.args.images)
    return lab.finish([
        "--device cuda: a.device becomes cuda:0 and .to('cuda') of a leaf is a non-leaf too",
        "in [2], torch.set_default_dtype(torch.float64) first: every float32 above becomes float64",
        "in [4], numbers = np.zeros(3) (float64): from_numpy still shares, now as float64",
        "--images cats.png: a real photo batch (run python -m tensor_features.download first for CIFAR-10 cats)",
    ])


if __name__ == "__main__":
    sys.exit(main())

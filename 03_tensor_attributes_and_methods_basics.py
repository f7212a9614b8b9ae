"""03 · tensor attributes: what a tensor carries besides its numbers.

The lesson makes tensors in different ways and reads their attributes, then shows the rules
that surprise people: dtype promotion, .to() on a leaf that requires grad, and NumPy arrays
that share a tensor's memory. With --images N (or --save-grid PNG) it adds a batch of cat
images.
"""

# %% Setup
import argparse
from pathlib import Path

import numpy as np
import torch

from tensor_features.cli import int_in_range, new_file
from tensor_features.lab import Lab, Try


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--images", type=int_in_range(1, 64), metavar="N",
        help="add observation [5]: a batch of N cat images (1..64), the CIFAR-10 cats if "
             "`python -m tensor_features.download` fetched them, else N random crops and flips "
             "of one embedded photo; it imports torchvision, a few seconds more (default: off)")
    parser.add_argument(
        "--save-grid", type=new_file((".png",)), metavar="PNG",
        help="also write the batch of [5] as one grid image to this .png file (with --images N, "
             "else 8 images); nothing else is written (default: off)")


lab = Lab.start("03 · tensor attributes", __doc__, __name__, add_arguments=add_arguments)


# %% [1] The attributes of tensors made in different ways
# Every tensor has a shape, a dtype and a device; for autograd it also has requires_grad,
# is_leaf and grad_fn, and these depend on how the tensor was made.
def attributes(lab: Lab) -> None:
    """Data, a parameter, and a result: shape, dtype, device, requires_grad, is_leaf, grad_fn"""
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # data
    w = torch.ones(2, requires_grad=True)  # a parameter
    y = a @ w  # a result
    lab.check((a.shape, a.dtype), ((2, 2), torch.float32),
              "Python floats become float32, the default dtype")
    lab.check(str(a.device), "cuda:0" if lab.device.type == "cuda" else "cpu",
              "a tensor records a concrete device: 'cuda' becomes cuda:0, the current GPU"
              if lab.device.type == "cuda" else "a tensor records its device: here the CPU")
    lab.check(str(torch.zeros(1).device), "cuda:0" if lab.device.type == "cuda" else "cpu",
              "made without device=: the default device, which lab.run sets to the GPU"
              if lab.device.type == "cuda"
              else "made without device=: the CPU, torch's default device")
    lab.check((a.requires_grad, a.is_leaf, a.grad_fn), (False, True, None),
              "data: a leaf that autograd ignores")
    lab.check((w.requires_grad, w.is_leaf, w.grad_fn), (True, True, None),
              "a parameter: a leaf whose .grad backward() will fill")
    lab.check((y.requires_grad, y.is_leaf), (True, False),
              "made by an op from w: its grad_fn is its node in the graph")
    lab.check(type(y.grad_fn).__name__, "MvBackward0",
              "the backward node of the op that made y (mv: matrix @ vector)")
    lab.check(y, [3.0, 7.0], "[1·1 + 2·1, 3·1 + 4·1]")


lab.run(attributes)


# %% [2] dtype promotion, and uint8 arithmetic that wraps
# Which dtype a result takes when two dtypes meet, each case checked below, and what uint8
# arithmetic does when a sum leaves 0..255.
def dtype_promotion(lab: Lab) -> None:
    """dtype promotion: the result's dtype when two dtypes meet"""
    # The rules: https://docs.pytorch.org/docs/stable/tensor_attributes.html#type-promotion-doc
    i = torch.tensor([1, 2, 3])
    lab.check(i.dtype, torch.int64, "Python ints become int64")
    int_times_float = i * 1.5
    lab.check(int_times_float.dtype, torch.float32,
              "a Python float lifts ints to the default float dtype")
    double_scalar = torch.tensor(1.0, dtype=torch.float64)  # 0-dim: shape ()
    int_plus_double = i + double_scalar
    lab.check(int_plus_double.dtype, torch.float64,
              "a 0-dim tensor of a higher category (float above int) sets the dtype")
    half = torch.ones(2, dtype=torch.float16)
    half_plus_double = half + double_scalar
    lab.check(half_plus_double.dtype, torch.float16,
              "same category (float): a 0-dim tensor does not widen a dimensioned one")
    half_plus_float = half + torch.ones(2)  # float32, dimensioned
    lab.check(half_plus_float.dtype, torch.float32, "two dimensioned tensors: the wider float wins")
    pixels = torch.tensor([200, 100], dtype=torch.uint8)
    brighter = pixels + 100  # a Python int does not widen uint8
    lab.check(brighter.dtype, torch.uint8, "a Python int is the same category (integer) as uint8")
    lab.check(brighter, [44, 200],
              "uint8 holds 0..255 and wraps around: 200 + 100 = 300 - 256 = 44")


lab.run(dtype_promotion)


# %% [3] .to() that changes a leaf's dtype or device makes a non-leaf; dtype= keeps a leaf
# .to() that changes the dtype or device of a leaf that requires grad gives a non-leaf, which an
# optimiser refuses.
def to_makes_non_leaf(lab: Lab) -> None:
    """.to() that changes a leaf's dtype or device: a recorded op, a non-leaf"""
    source = torch.ones(2, requires_grad=True)  # a float32 leaf
    converted = source.to(torch.float64)  # an op: a float64 copy that remembers source
    created = torch.ones(2, dtype=torch.float64, requires_grad=True)  # a float64 leaf
    lab.check((converted.is_leaf, type(converted.grad_fn).__name__), (False, "ToCopyBackward0"),
              "a copy made by an op, with a node in the graph")
    lab.check((created.is_leaf, created.grad_fn), (True, None),
              "made directly with the dtype it needs")
    (converted.sum() + created.sum()).backward()
    with lab.expect_warning("is not a leaf Tensor",
                            "reading .grad of a non-leaf warns, then gives None"):
        converted_grad = converted.grad
    lab.check(converted_grad, None,
              "backward() fills .grad of leaves only (unless retain_grad(): 05 backward)")
    lab.check((source.grad, source.grad.dtype), ([1.0, 1.0], torch.float32),
              "the gradient went on, through ToCopyBackward0, to the float32 leaf, in its dtype")
    lab.check(created.grad, [1.0, 1.0], "d(sum)/d(created) = 1 for each element")
    with lab.expect_error("can't optimize a non-leaf Tensor",
                          "torch/optim/optimizer.py takes leaves (and tensors that retain_grad()) "
                          "only, unless differentiable=True: give it created, or source",
                          error_type=ValueError):
        torch.optim.SGD([converted], lr=0.1)
    # The same .to(), of a leaf without requires_grad:
    untracked = torch.ones(2).to(torch.float64)
    lab.check((untracked.is_leaf, untracked.grad_fn), (True, None),
              "nothing to record without requires_grad: the copy is a leaf, a plain new tensor")
    same = source.to(torch.float32)  # already float32, already on this device
    lab.check(same is source, True,
              ".to() with nothing to change returns the tensor itself (Tensor.to docs)")
    # device="cpu": made on the CPU whatever the lab's device, then moved to it.
    moved = torch.ones(2, requires_grad=True, device="cpu").to(lab.device)
    lab.check(moved.is_leaf, lab.device.type == "cpu",
              "to the CPU it is already on: the leaf itself; to a GPU: a copy, a non-leaf, "
              "as .cuda() gives")


lab.run(to_makes_non_leaf)


# %% [4] NumPy: refused while tracked, shared when converted
# NumPy arrays can share a tensor's memory, even behind autograd's back.
def numpy_interop(lab: Lab) -> None:
    """NumPy: refused while tracked; shared, not copied, once detached"""
    # NumPy arrays live on the CPU, so w is made there, whatever the lab's device.
    w = torch.ones(2, requires_grad=True, device="cpu")
    with lab.expect_error("Can't call numpy() on Tensor that requires grad",
                          "NumPy cannot record a graph; the message says what to do"):
        w.numpy()
    array = w.detach().numpy()  # no history, the same memory
    lab.check(array.ctypes.data == w.data_ptr(), True,
              "the array's buffer starts at w's first byte: no copy")
    y = w * w  # mul saves w for backward
    array[0] = 5.0  # a write through NumPy, which autograd cannot see
    after_numpy_write = (w.tolist(), w._version)
    lab.check(after_numpy_write, ([5.0, 1.0], 0),
              "w changed, yet w._version, torch's count of in-place writes to w, is still 0")
    y.sum().backward()
    lab.check(w.grad, [10.0, 2.0],
              "no error: backward used the new w, 2·5, though y was computed with w = 1")
    with torch.no_grad():
        w[1] = 3.0  # a write through torch
    lab.check((w.tolist(), w._version), ([5.0, 3.0], 1),
              "a write through torch is counted; backward() checks this count (03 storage [4])")

    numbers = np.zeros(3, dtype=np.float32)
    shared = torch.from_numpy(numbers)  # wraps the array's buffer: no copy
    copied = torch.tensor(numbers)  # torch.tensor's docs: it constructs a tensor "by copying data"
    lab.check(shared.dtype, torch.float32, "from_numpy keeps NumPy's dtype")
    numbers[0] = 5.0
    lab.check(shared, [5.0, 0.0, 0.0], "from_numpy shares the array's memory")
    lab.check(copied, [0.0, 0.0, 0.0], "a copy, taken before the write")
    shared[1] = 7.0
    lab.check(numbers.tolist(), [5.0, 7.0, 0.0],
              "and the other way: a write into shared lands in numbers")


lab.run(numpy_interop)


# %% [5] A batch of images (with --images N or --save-grid PNG: it imports torchvision, seconds)
# A batch of cat images: uint8, [N, C, H, W], an [N, H, W, C] view (the layout PIL uses, as the
# saved grid shows; not torch.channels_last, which keeps the shape [N, C, H, W]), and a float copy
# to normalise. Without the CIFAR-10 download (python -m tensor_features.download) those images are
# N random crops and flips of one photo, not N photos.
def image_batch(lab: Lab, n: int, grid: Path | None = None, root: str | None = None) -> None:
    """A batch of N cat images: uint8 [N, C, H, W], an [N, H, W, C] view, float copy to normalise"""
    from tensor_features.load_data import cat_images_source, load_cat_images
    from tensor_features.utils import display_images

    lab.note(cat_images_source(root))  # offline: crops and flips of one photo, not N photos
    batch = load_cat_images(n, root=root, seed=0).to(lab.device)  # loaded on the CPU: moved
    lab.check((batch.dtype, batch.shape), (torch.uint8, (n, 3, 32, 32)),
              "bytes; N images, 3 channels (red, green, blue), 32×32 pixels")
    lab.check(batch.stride(), (3 * 32 * 32, 32 * 32, 32, 1),
              "next image, channel, row, pixel: C·H·W, H·W, W, 1")
    # [N, H, W, C]: pixel by pixel, as PIL and matplotlib lay images out
    nhwc = batch.permute(0, 2, 3, 1)
    lab.check((nhwc.shape, nhwc.stride()), ((n, 32, 32, 3), (3 * 32 * 32, 32, 1, 32 * 32)),
              "permute reorders shape and strides together")
    lab.check(nhwc.data_ptr() == batch.data_ptr(), True,
              "a view: the same bytes, read in another order")
    # torch.channels_last is a memory format, not a permute: .contiguous(memory_format=…) makes a
    # copy that keeps the shape [N, C, H, W].
    stored_channels_last = batch.contiguous(memory_format=torch.channels_last)
    lab.check((stored_channels_last.shape, stored_channels_last.stride()),
              ((n, 3, 32, 32), (3 * 32 * 32, 1, 32 * 3, 3)),
              "still indexed [N, C, H, W]; only the bytes lie pixel by pixel, so C's stride is 1")
    # True division "always promotes integer types to the default scalar type" (torch.div docs):
    # float32.
    scaled = batch / 255
    lab.check((scaled.dtype, scaled.untyped_storage().nbytes()),
              (torch.float32, 4 * n * 3 * 32 * 32), "4 bytes per value where uint8 took 1")
    channel_mean = scaled.mean(dim=(0, 2, 3))  # one mean per channel: shape [3]
    with lab.expect_error("must match the size of tensor b (3) at non-singleton dimension 3",
                          "broadcasting lines up the LAST axes: W = 32 against the 3 channel "
                          "means"):
        scaled - channel_mean
    mean = scaled.mean(dim=(0, 2, 3), keepdim=True)  # keepdim: shape [1, 3, 1, 1], lined up with C
    std = scaled.std(dim=(0, 2, 3), keepdim=True)
    normalized = (scaled - mean) / std
    lab.check((mean.shape, normalized.shape), ((1, 3, 1, 1), (n, 3, 32, 32)),
              "the size-1 axes stretch over N, H and W; C meets C")
    if grid is not None:
        written = display_images(batch.cpu(), grid)  # a grid of up to 8 images per row
        lab.note(f"wrote the {n} images as one grid to {written}")


# In a notebook, set lab.args.images = 8 in this cell to run it.
if lab.args.images or lab.args.save_grid:
    lab.run(image_batch, lab.args.images or 8, lab.args.save_grid)


# %% The end
TRIES = [
    Try("a is made on the GPU (cuda:0); moved, a CPU leaf sent .to(cuda), is a non-leaf",
        flags="--device cuda", needs_cuda=True),
    Try("observation [5]: 8 cat images as one uint8 batch (without the download: 8 crops and "
        "flips of one photo)", flags="--images 8"),
    Try("a dimensioned float64 widens float16, so that dtype check disagrees",
        edit=("half + double_scalar", "half + double_scalar.reshape(1)"), where=dtype_promotion),
    Try("two checks disagree: the sum stays int16, and an int16 does not wrap at 256: 300",
        edit=("dtype=torch.uint8", "dtype=torch.int16"), where=dtype_promotion),
    Try("from_numpy still shares the memory, but keeps NumPy's float64, so the dtype check "
        "disagrees", edit=("np.zeros(3, dtype=np.float32)", "np.zeros(3)"), where=numpy_interop),
]
lab.finish(TRIES)

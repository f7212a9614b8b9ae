"""03 basics: every value the observations' checks saw (and the locals they left), against oracles written here: dtypes from the
documented promotion rules, uint8 sums done in Python ints modulo 256, gradients by hand, NumPy's
own view of the shared buffers, and the image batch rebuilt in float64 NumPy from its bytes; and
the --images / --save-grid command line (one-line errors, nothing written but the grid)."""

import re

import numpy as np
import pytest
import torch

from tests.support import Promise, ROOT, assert_caught, load_lesson, run_in_process

LESSON = "03_tensor_attributes_and_methods_basics.py"
lesson = load_lesson(LESSON)

# The lesson's Try lines, in order: the exit code and the text each adds to the output.
TRY_PROMISES = [
    Promise(shows=("device cuda",)),
    Promise(shows=("[5] A batch of N cat images",)),
    Promise(exit=1, shows=("FAIL  half_plus_double.dtype = torch.float64",)),
    Promise(exit=1, shows=("FAIL  brighter.dtype = torch.int16", "FAIL  brighter = [300, 200]")),
    Promise(exit=1, shows=("FAIL  shared.dtype = torch.float64",)),
]

MUTANTS = [
    ("03_tensor_attributes_and_methods_basics.py", "    y = a @ w  # a result", "    y = w @ a  # a result"),
    ("03_tensor_attributes_and_methods_basics.py", "double_scalar = torch.tensor(1.0, dtype=torch.float64",
     "double_scalar = torch.tensor([1.0], dtype=torch.float64"),
    ("03_tensor_attributes_and_methods_basics.py", "    brighter = pixels + 100", "    brighter = pixels.int() + 100"),
    ("03_tensor_attributes_and_methods_basics.py", "    converted = source.to(torch.float64)  #",
     "    converted = source.detach().to(torch.float64).requires_grad_()  #"),
    ("03_tensor_attributes_and_methods_basics.py", "    array = w.detach().numpy()  #", "    array = w.detach().numpy().copy()  #"),
    ("03_tensor_attributes_and_methods_basics.py", "    shared = torch.from_numpy(numbers)", "    shared = torch.tensor(numbers)"),
    ("03_tensor_attributes_and_methods_basics.py", "    copied = torch.tensor(numbers)", "    copied = torch.as_tensor(numbers)"),
    ("03_tensor_attributes_and_methods_basics.py", "nhwc = batch.permute(0, 2, 3, 1)", "nhwc = batch.permute(0, 3, 2, 1)"),
    ("03_tensor_attributes_and_methods_basics.py", "batch.contiguous(memory_format=torch.channels_last)",
     "batch.permute(0, 2, 3, 1).contiguous()"),
    ("03_tensor_attributes_and_methods_basics.py", "    untracked = torch.ones(2).to(torch.float64)",
     "    untracked = torch.ones(2, requires_grad=True).to(torch.float64)"),
    ("03_tensor_attributes_and_methods_basics.py", "        w[1] = 3.0  # a write through torch", "        array[1] = 3.0  # a write through torch"),
    ("03_tensor_attributes_and_methods_basics.py", "    mean = scaled.mean(dim=(0, 2, 3), keepdim=True)",
     "    mean = scaled.mean(dim=(0, 1, 2, 3), keepdim=True)"),
    ("03_tensor_attributes_and_methods_basics.py", "    std = scaled.std(dim=(0, 2, 3), keepdim=True)",
     "    std = scaled.std(dim=(0, 2, 3), keepdim=True, unbiased=False)"),
    # the note names the default folder as "data", not as the relative path "./data"
    ("tensor_features/load_data.py", "else os.path.join(os.curdir, cached.parent)", "else cached.parent"),
]

# Written by a tester who had not read these tests, from the lessons and the package alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # ---------------------------------------------------------------- 03 basics
    # transposed matrix in attributes(): y = aᵀ w = [4, 6] instead of [3, 7]
    ('03_tensor_attributes_and_methods_basics.py', '    y = a @ w  # a result\n', '    y = a.T @ w  # a result\n'),
    # dtype promotion: the double scalar is widened by hand, half_plus_double becomes float64 instead of float16
    ('03_tensor_attributes_and_methods_basics.py', 'half_plus_double = half + double_scalar', 'half_plus_double = half.double() + double_scalar'),
    # numpy_interop: detach().clone().numpy() copies, so the NumPy write never reaches w (w stays [1, 1], grad [2, 2])
    ('03_tensor_attributes_and_methods_basics.py', 'array = w.detach().numpy()  # no history, the same memory', 'array = w.detach().clone().numpy()  # no history, the same memory'),
    # numpy_interop: torch.tensor copies where from_numpy shares: shared stays [0, 0, 0] and numbers keeps 0 at [1]
    ('03_tensor_attributes_and_methods_basics.py', 'shared = torch.from_numpy(numbers)  # wraps', 'shared = torch.tensor(numbers)  # wraps'),
    # image_batch: the mean is taken over the channel axis too: mean shape (1, 1, 1, 1), normalised per batch not per channel
    ('03_tensor_attributes_and_methods_basics.py', 'mean = scaled.mean(dim=(0, 2, 3), keepdim=True)', 'mean = scaled.mean(dim=(0, 1, 2, 3), keepdim=True)'),
]


def test_attributes(lab):
    seen = lab.run(lesson.attributes)
    a, w, y = (seen.names[name] for name in ("a", "w", "y"))
    rows = [[1.0, 2.0], [3.0, 4.0]]
    assert a.cpu().tolist() == rows and a.dtype == torch.float32 and tuple(a.shape) == (2, 2)
    assert str(a.device) == {"cpu": "cpu", "cuda": "cuda:0"}[lab.device.type]
    # made without device=: the default device, which lab.run sets to the lab's
    assert seen["str(torch.zeros(1).device)"] == {"cpu": "cpu", "cuda": "cuda:0"}[lab.device.type]
    assert (a.requires_grad, a.is_leaf, a.grad_fn) == (False, True, None)
    assert (w.requires_grad, w.is_leaf, w.grad_fn) == (True, True, None) and w.cpu().tolist() == [1.0, 1.0]
    assert (y.requires_grad, y.is_leaf) == (True, False)
    assert type(y.grad_fn).__name__ == "MvBackward0"
    assert y.detach().cpu().tolist() == [sum(row) for row in rows]  # a @ ones: the row sums


def test_dtype_promotion_follows_the_documented_rules(lab):
    seen = lab.run(lesson.dtype_promotion).names
    # Oracle: the rules of the "Type promotion" section of the tensor_attributes docs, by hand.
    assert seen["i"].dtype == torch.int64  # integers without dtype=
    assert seen["int_times_float"].dtype == torch.float32  # Python float -> default float dtype
    assert seen["int_plus_double"].dtype == torch.float64  # 0-dim of a higher category decides
    assert seen["half_plus_double"].dtype == torch.float16  # 0-dim of the same category does not
    assert seen["half_plus_float"].dtype == torch.float32  # dimensioned: the wider one
    assert seen["int_times_float"].cpu().tolist() == [1.5, 3.0, 4.5]
    brighter = seen["brighter"]
    assert brighter.dtype == torch.uint8
    assert brighter.cpu().tolist() == [(200 + 100) % 256, (100 + 100) % 256]


def test_to_makes_a_non_leaf_that_an_optimiser_refuses(lab):
    seen = lab.run(lesson.to_makes_non_leaf)
    source, converted, created = (seen.names[name] for name in ("source", "converted", "created"))
    assert not converted.is_leaf and type(converted.grad_fn).__name__ == "ToCopyBackward0"
    assert converted.dtype == torch.float64 and created.dtype == torch.float64 and created.is_leaf
    assert seen["converted_grad"] is None
    # d/dx Σ x = 1 per element, arriving in each leaf's own dtype.
    assert source.grad.dtype == torch.float32 and source.grad.cpu().tolist() == [1.0, 1.0]
    assert created.grad.dtype == torch.float64 and created.grad.cpu().tolist() == [1.0, 1.0]
    assert_caught(seen["error"], ValueError, "can't optimize a non-leaf Tensor")
    torch.optim.SGD([source, created], lr=0.1)  # the leaves are accepted
    assert seen.names["same"] is source and seen["same is source"] is True
    moved = seen.names["moved"]
    assert moved.is_leaf == (lab.device.type == "cpu") and seen["moved.is_leaf"] == moved.is_leaf
    assert moved.device.type == lab.device.type
    # The same conversion of a tensor that does not require grad records nothing: a plain leaf.
    untracked = seen.names["untracked"]
    assert untracked.is_leaf and untracked.grad_fn is None and not untracked.requires_grad
    assert untracked.dtype == torch.float64 and untracked.cpu().tolist() == [1.0, 1.0]


def test_numpy_shares_memory_behind_autograds_back(lab):
    seen = lab.run(lesson.numpy_interop)
    assert_caught(seen["error"], RuntimeError, "Can't call numpy() on Tensor that requires grad")
    w, array = seen.names["w"], seen.names["array"]
    assert np.shares_memory(array, w.detach().numpy())  # NumPy's own answer, not a value compared
    assert seen["after_numpy_write"] == ([5.0, 1.0], 0)  # written through NumPy: not counted
    assert seen["w.grad"].tolist() == [2 * 5.0, 2 * 1.0]
    # y = w * w was built at w = 1, but backward read the saved w after the write: 2 · [5, 1].
    assert w.grad.tolist() == [2 * 5.0, 2 * 1.0]
    assert w.tolist() == [5.0, 3.0] and w._version == 1  # then one write through torch: counted once
    shared, copied, numbers = (seen.names[name] for name in ("shared", "copied", "numbers"))
    assert shared.dtype == torch.float32 and np.shares_memory(shared.numpy(), numbers)
    # torch.tensor copies: on the CPU, into memory of its own; on a GPU, trivially
    assert copied.device.type != "cpu" or not np.shares_memory(copied.numpy(), numbers)
    assert numbers.tolist() == [5.0, 7.0, 0.0] and shared.tolist() == [5.0, 7.0, 0.0]
    assert copied.cpu().tolist() == [0.0, 0.0, 0.0] and seen["copied"].tolist() == [0.0, 0.0, 0.0]
    assert seen["shared"].tolist() == [5.0, 0.0, 0.0]  # as its check saw it, before shared[1] = 7


def test_image_batch_against_a_float64_numpy_oracle(lab, tmp_path):
    from PIL import Image

    n = 5
    grid = tmp_path / "grid.png"
    run = lab.run(lesson.image_batch, n, grid, root=str(tmp_path / "no-download"))
    seen = run.names
    offline = f"random crops and flips of one photo, chelsea.png (no CIFAR-10 download in {tmp_path / 'no-download'})"
    assert offline in lab.stream.getvalue()  # offline, it says what the batch is
    batch = seen["batch"]
    assert batch.dtype == torch.uint8 and tuple(batch.shape) == (n, 3, 32, 32)
    assert batch.stride() == (3 * 32 * 32, 32 * 32, 32, 1)
    raw = batch.cpu().numpy()

    nhwc = seen["nhwc"]
    assert tuple(nhwc.shape) == (n, 32, 32, 3) and nhwc.stride() == (3072, 32, 1, 1024)
    assert nhwc.data_ptr() == batch.data_ptr()
    assert np.array_equal(nhwc.cpu().numpy(), raw.transpose(0, 2, 3, 1))

    # torch.channels_last: the [N, C, H, W] values, in bytes laid out pixel by pixel (H, W, C innermost).
    stored = seen["stored_channels_last"]
    assert tuple(stored.shape) == (n, 3, 32, 32) and stored.stride() == (3 * 32 * 32, 1, 32 * 3, 3)
    assert np.array_equal(stored.cpu().numpy(), raw)
    stored_bytes = np.frombuffer(bytes(stored.untyped_storage().cpu().tolist()), dtype=np.uint8)
    assert np.array_equal(stored_bytes, raw.transpose(0, 2, 3, 1).reshape(-1))

    values = raw.astype(np.float64) / 255
    u = 2.0**-24  # float32's unit roundoff: one rounded operation is off by at most u·|result|
    assert seen["scaled"].dtype == torch.float32
    # One rounded division each (two roundings, were it a multiplication by a rounded 1/255).
    assert np.all(np.abs(seen["scaled"].cpu().numpy() - values) <= 2 * u * values)
    mean = values.mean(axis=(0, 2, 3), keepdims=True)
    std = values.std(axis=(0, 2, 3), ddof=1, keepdims=True)  # torch.std is the n - 1 estimate
    assert tuple(seen["mean"].shape) == (1, 3, 1, 1)
    # A float32 sum of N = n·32·32 values, in whatever order this CPU's SIMD width and thread count
    # give, is within γ_N·Σ|v| of the exact sum (Higham; γ_N ≈ N·u); each value was rounded once more
    # by the division by 255, and the mean once by the division by N: |mean − exact| ≤ (N + 2)·u·mean|v|
    # (mean|v| ≥ |mean|), 1.8e-4 here. That still tells the channels apart (their means differ by 0.1
    # and more); the std and the normalisation are held tighter below.
    count = n * 32 * 32
    mean_bound = (count + 2) * u * values.mean(axis=(0, 2, 3), keepdims=True)
    assert np.all(np.abs(seen["mean"].cpu().numpy() - mean) <= mean_bound)
    # torch.std of float32 on the CPU accumulates in float64 (Welford): float32 rounding of its inputs
    # and of its result, far below 1e-6 at a std of 0.1.
    assert np.allclose(seen["std"].cpu().numpy(), std, atol=1e-6)
    # (scaled − mean) / std from the lesson's own float32 scaled, mean and std: two correctly rounded
    # float32 ops (the subtraction, the division) on exactly these inputs, so within γ₂·|result| < 3u·|result|
    # of the same formula in float64, on every CPU.
    lesson_mean, lesson_std = (seen[k].cpu().double().numpy() for k in ("mean", "std"))
    by_formula = (seen["scaled"].cpu().double().numpy() - lesson_mean) / lesson_std
    assert np.all(np.abs(seen["normalized"].cpu().double().numpy() - by_formula) <= 3 * u * np.abs(by_formula))
    assert_caught(run["error"], RuntimeError, "The size of tensor a (32) must match the size of tensor b (3)")

    # make_grid: up to 8 tiles a row, 2 pixels of padding around each: n tiles in one row here.
    with Image.open(grid) as image:
        assert image.format == "PNG" and image.size == (n * (32 + 2) + 2, 32 + 2 * 2)
        pixels = np.asarray(image.convert("RGB"))
    for k in range(n):
        tile = pixels[2:34, 2 + 34 * k: 34 + 34 * k]
        assert np.array_equal(tile, raw[k].transpose(1, 2, 0)), k


def test_the_grid_is_the_only_file_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TENSOR_FEATURES_DATA", raising=False)  # the default place: ./data
    done = run_in_process(ROOT / LESSON, ["--device", "cpu", "--images", "3", "--save-grid", "cats.png"])
    assert done.code == 0, done.stdout[-2000:] + done.stderr
    assert "[5] A batch of N cat images" in done.stdout
    assert "random crops and flips of one photo, chelsea.png (no CIFAR-10 download in ./data)" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cats.png"]
    assert re.findall(r"^\[(\d)\] ", done.stdout, re.M) == ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize("argv, words", [
    (["--save-grid", "."], "is a folder"),
    (["--save-grid", "cats"], "must be a file name ending in .png"),
    (["--save-grid", "cats.jpg"], "must be a file name ending in .png"),
    (["--save-grid", ".png"], "must be a file name ending in .png"),
    (["--save-grid", "missing/cats.png"], "there is no folder 'missing'"),
    (["--save-grid", "a-file/cats.png"], "there is no folder 'a-file'"),
    (["--images", "0"], "out of range"),
    (["--images", "65"], "out of range"),
    (["--images", "1e3"], "is not an integer"),
])
def test_bad_image_flags_are_one_line_and_write_nothing(tmp_path, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    done = run_in_process(ROOT / LESSON, ["--device", "cpu", *argv])
    assert done.code == 2 and done.stderr.count("\n") == 1, done.stderr
    assert argv[0] in done.stderr and words in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


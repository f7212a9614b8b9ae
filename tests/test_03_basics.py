"""03 basics: attributes, promotion, .to() of a leaf, NumPy sharing."""

import torch

from conftest import assert_caught, load_lesson, run_script

lesson = load_lesson("03_tensor_attributes_and_methods_basics.py")


def test_attributes(lab):
    seen = lesson.attributes(lab)
    a = [[1.0, 2.0], [3.0, 4.0]]
    assert seen["y"].cpu().tolist() == [a[0][0] + a[0][1], a[1][0] + a[1][1]]  # a @ ones
    assert seen["w"].is_leaf and not seen["y"].is_leaf
    assert seen["a"].device.type == lab.device.type


def test_dtype_promotion_follows_torch_result_type(lab):
    seen = lesson.dtype_promotion(lab)
    # Oracle: torch.result_type, the documented promotion function, on CPU tensors.
    i = torch.tensor([1, 2, 3])
    half = torch.ones(2, dtype=torch.float16)
    assert seen["int * python float"] == torch.result_type(i, 1.5)
    assert seen["int + 0-dim float64"] == torch.result_type(i, torch.tensor(1.0, dtype=torch.float64))
    assert seen["float16 + 0-dim float64"] == torch.result_type(half, torch.tensor(1.0, dtype=torch.float64))
    assert seen["float16 + float32 vector"] == torch.promote_types(torch.float16, torch.float32)


def test_to_makes_a_non_leaf(lab):
    seen = lesson.to_makes_non_leaf(lab)
    assert not seen["converted"].is_leaf and seen["created"].is_leaf
    assert seen["created"].grad.cpu().tolist() == [1.0, 1.0]  # d/dx Σx


def test_numpy_interop(lab):
    seen = lesson.numpy_interop(lab)
    assert_caught(seen["error"], RuntimeError, "Can't call numpy() on Tensor that requires grad")
    assert seen["shared"].tolist() == [5.0, 7.0, 0.0]
    assert seen["copied"].tolist() == [0.0, 0.0, 0.0]


def test_runs_as_a_script():
    result = run_script("03_tensor_attributes_and_methods_basics.py", "--device", "cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ToCopyBackward0" in result.stdout


def test_image_batch_from_the_embedded_photo(lab, tmp_path):
    seen = lesson.image_batch(lab, str(tmp_path / "grid.png"), root=str(tmp_path / "no-download"))
    batch = seen["batch"]
    assert batch.dtype == torch.uint8 and batch.shape[1] == 3
    # Oracle: per-channel statistics recomputed in float64 from the raw bytes.
    raw = batch.double().cpu() / 255
    expected = (raw - raw.mean(dim=(0, 2, 3), keepdim=True)) / raw.std(dim=(0, 2, 3), keepdim=True)
    assert torch.allclose(seen["normalized"].double().cpu(), expected, atol=1e-4)
    assert seen["path"].exists()

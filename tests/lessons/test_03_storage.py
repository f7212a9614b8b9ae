"""03 storage: every value the observations' checks saw and the locals they left, against oracles written here: the block's raw
bytes read back with NumPy, every view's elements looked up in those bytes at a hand-computed
offset + i·stride(0) + j·stride(1), values of the 3×4 arange written out by hand, byte counts from
shapes, and the version counter's steps counted by hand."""

import numpy as np
import pytest
import torch

from tests.support import Promise, assert_caught, load_lesson

LESSON = "03_tensor_attributes_and_methods_storage.py"
lesson = load_lesson(LESSON)

# The lesson's Try lines, in order: the exit code and the text each adds to the output.
TRY_PROMISES = [
    Promise(shows=("device cuda",)),
    Promise(exit=1, shows=("FAIL  storage.nbytes() = 96",)),
    Promise(exit=1, shows=("FAIL  no error",)),
    Promise(exit=1, shows=("FAIL  base[1, 1] = 5.0",)),
]

MUTANTS = [
    ("03_tensor_attributes_and_methods_storage.py", "    base = torch.arange(12.0).reshape(3, 4)  # 0, 1",
     "    base = torch.arange(12.0).reshape(4, 3).t()  # 0, 1"),
    ("03_tensor_attributes_and_methods_storage.py", "    corner = base[1:, 1:]\n    lab.check(corner.untyped", "    corner = base[1:, :3]\n    lab.check(corner.untyped"),
    ("03_tensor_attributes_and_methods_storage.py", "    reshaped = base.view(4, 3)", "    reshaped = base.view(3, 4)"),
    ("03_tensor_attributes_and_methods_storage.py", "    permuted = base.permute(1, 0)", "    permuted = base.view(4, 3)"),
    ("03_tensor_attributes_and_methods_storage.py", "    expanded = column.expand(3, 4)", "    expanded = column.repeat(1, 4)"),
    ("03_tensor_attributes_and_methods_storage.py", "    flat = transposed.reshape(12)", "    flat = base.reshape(12)"),
    ("03_tensor_attributes_and_methods_storage.py", "    row_major = transposed.contiguous()", "    row_major = transposed"),
    ("03_tensor_attributes_and_methods_storage.py", "    corner[0, 0] = 100.0", "    corner[0, 1] = 100.0"),
    ("03_tensor_attributes_and_methods_storage.py", "    copy = base.clone()", "    copy = base.view(3, 4)"),
    ("03_tensor_attributes_and_methods_storage.py", "    copy = base.clone()", "    copy = base.detach()"),
    ("03_tensor_attributes_and_methods_storage.py", "    version_of_new_copy = copy._version", "    version_of_new_copy = base._version"),
    ("03_tensor_attributes_and_methods_storage.py", "    h[1:][0] = 5.0", "    h[1:].clone()[0] = 5.0"),
    # the same write, but not through a view: h's grad_fn is IndexFillBackward0, not CopySlices
    ("03_tensor_attributes_and_methods_storage.py", "    h[1:][0] = 5.0",
     "    h.index_fill_(0, torch.tensor([1]), 5.0)"),
    # [2]'s base made as a copy: no longer a view of arange's result
    ("03_tensor_attributes_and_methods_storage.py",
     "    base = torch.arange(12.0).reshape(3, 4)\n    block = base.untyped_storage().data_ptr()  # where",
     "    base = torch.arange(12.0).reshape(3, 4).clone()\n    block = base.untyped_storage().data_ptr()  # where"),
]

# Written by a tester who had not read these tests, from the lessons and the package alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # ---------------------------------------------------------------- 03 storage
    # views(): off-by-one slice, corner starts at [1, 2]: storage_offset 6, not 5
    ('03_tensor_attributes_and_methods_storage.py', '    corner = base[1:, 1:]\n    lab.check(corner.untyped_storage().data_ptr() == block', '    corner = base[1:, 2:]\n    lab.check(corner.untyped_storage().data_ptr() == block'),
    # copies(): reshape of base instead of its transpose: flat is a view in row order (0..11), not a copy read column-wise
    ('03_tensor_attributes_and_methods_storage.py', 'flat = transposed.reshape(12)', 'flat = base.reshape(12)'),
    # write_through_view(): detach() instead of clone(): copy shares memory and counter, version_of_new_copy = 1, base[0,0] = -1
    ('03_tensor_attributes_and_methods_storage.py', '    copy = base.clone()\n    version_of_new_copy = copy._version', '    copy = base.detach()\n    version_of_new_copy = copy._version'),
    # storage_anatomy(): rows of 3 instead of rows of 4: base stride (3, 1), base[2, 1] = 7
    ('03_tensor_attributes_and_methods_storage.py', 'base = torch.arange(12.0).reshape(3, 4)  # 0, 1, ..., 11 in rows of 4', 'base = torch.arange(12.0).reshape(4, 3)  # 0, 1, ..., 11 in rows of 4'),
]

ARANGE_3x4 = [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0], [8.0, 9.0, 10.0, 11.0]]


def block(tensor: torch.Tensor) -> np.ndarray:
    """The whole storage block under a float32 tensor, from its raw bytes (not through its view)."""
    return np.frombuffer(bytes(tensor.untyped_storage().cpu().tolist()), dtype=np.float32)


def same_block(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def assert_view_reads(tensor: torch.Tensor, offset: int, strides: tuple[int, int]) -> None:
    """Element [i, j] is element offset + i·strides[0] + j·strides[1] of the block, for every i, j."""
    flat = block(tensor)
    rows, cols = tensor.shape
    values = tensor.cpu().tolist()
    for i in range(rows):
        for j in range(cols):
            assert values[i][j] == flat[offset + i * strides[0] + j * strides[1]], (i, j)


def test_storage_anatomy(lab):
    seen = lab.run(lesson.storage_anatomy)
    base = seen.names["base"]
    assert base.dtype == torch.float32 and base.cpu().tolist() == ARANGE_3x4
    assert block(base).tolist() == list(range(12))  # the block holds 0..11 in order
    assert seen["storage.nbytes()"] == 12 * 4
    assert base.stride() == (4, 1) and base.storage_offset() == 0 and base.is_contiguous()
    assert_view_reads(base, 0, (4, 1))


def test_views_share_the_block_at_hand_computed_offsets_and_strides(lab):
    seen = lab.run(lesson.views).names
    base = seen["base"]
    assert base.cpu().tolist() == ARANGE_3x4

    # base is itself a view, of arange's 1-D result; a view's ._base is the tensor its chain of views began at.
    assert base._base is not None and base._base.dim() == 1 and base._base.cpu().tolist() == list(range(12))
    assert same_block(base._base, base) and not base._base._is_view()

    corner = seen["corner"]
    assert corner._base is base._base
    assert same_block(corner, base) and corner.cpu().tolist() == [[5.0, 6.0, 7.0], [9.0, 10.0, 11.0]]
    assert corner.storage_offset() == 1 * 4 + 1 and corner.stride() == (4, 1)
    assert corner.data_ptr() - base.data_ptr() == (1 * 4 + 1) * 4  # elements × bytes
    assert_view_reads(corner, 5, (4, 1))

    reshaped = seen["reshaped"]
    assert same_block(reshaped, base) and tuple(reshaped.shape) == (4, 3) and reshaped.stride() == (3, 1)
    assert reshaped.cpu().tolist() == [[0.0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert_view_reads(reshaped, 0, (3, 1))

    columns_of_base = [[0.0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7, 11]]
    for name in ("transposed", "permuted"):
        view = seen[name]
        assert same_block(view, base) and view.stride() == (1, 4) and not view.is_contiguous(), name
        assert view.cpu().tolist() == columns_of_base, name
        assert_view_reads(view, 0, (1, 4))

    expanded = seen["expanded"]
    assert expanded.stride() == (1, 0) and expanded.untyped_storage().nbytes() == 3 * 4
    assert expanded.cpu().tolist() == [[1.0] * 4, [2.0] * 4, [3.0] * 4]
    assert_view_reads(expanded, 0, (1, 0))


def test_copies_and_the_impossible_view(lab):
    run = lab.run(lesson.copies)
    seen = run.names
    base = seen["base"]
    assert_caught(run["error"], RuntimeError, "view size is not compatible with input tensor's size and stride")
    # The transpose of [[0..3], [4..7], [8..11]] read row by row, written out by hand.
    by_columns = [0.0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    flat = seen["flat"]
    assert not same_block(flat, base) and flat.cpu().tolist() == by_columns
    assert block(flat).tolist() == by_columns  # its own block, in that order

    row_major = seen["row_major"]
    assert not same_block(row_major, base) and row_major.is_contiguous() and row_major.stride() == (3, 1)
    assert block(row_major).tolist() == by_columns

    in_rows_of_3 = seen["in_rows_of_3"]
    assert same_block(in_rows_of_3, base) and in_rows_of_3.stride() == (3, 1)
    assert in_rows_of_3.cpu().flatten().tolist() == list(range(12))

    cloned = seen["cloned"]
    assert not same_block(cloned, base) and cloned.cpu().tolist() == ARANGE_3x4
    assert base.cpu().tolist() == ARANGE_3x4


def test_write_through_a_view_and_the_version_counter(lab):
    run = lab.run(lesson.write_through_view)
    seen = run.names
    base, corner, copy = seen["base"], seen["corner"], seen["copy"]
    written = [row[:] for row in ARANGE_3x4]
    written[1][1] = 100.0  # the corner's [0, 0] is base's [1, 1]
    assert base.cpu().tolist() == written and same_block(corner, base)
    assert (base._version, corner._version) == (1, 1)  # one write, one shared counter
    cloned_then_written = [row[:] for row in written]
    cloned_then_written[0][0] = -1.0
    assert copy.cpu().tolist() == cloned_then_written and not same_block(copy, base)
    assert seen["version_of_new_copy"] == 0 and copy._version == 1  # made fresh, then written once
    assert run["version_of_new_copy"] == 0 and run["base[1, 1]"].item() == 100.0

    assert seen["h"].cpu().tolist() == [2.0, 5.0, 2.0]  # leaf * 2, then h[1] = 5 through a view
    assert seen["h"]._version == 1
    assert type(seen["h"].grad_fn).__name__ == "CopySlices"  # the grad_fn of a tensor written through a view
    assert_caught(run["error"], RuntimeError, "which is output 0 of torch::autograd::CopySlices")
    assert_caught(run["error"], RuntimeError, "is at version 1; expected version 0 instead")
    assert seen["leaf"].grad is None  # backward stopped before reaching the leaf


def test_permute_takes_a_reordering_of_all_the_axes():
    """Backs [2]'s why: any reordering of all the axes, for any number of axes; fewer, or one twice, is refused."""
    x = torch.zeros(2, 3, 4, 5)
    assert tuple(x.permute(3, 1, 0, 2).shape) == (5, 3, 2, 4)
    assert x.permute(3, 1, 0, 2).stride() == (1, 20, 60, 5)  # strides of [2, 3, 4, 5]: 60, 20, 5, 1, reordered
    for too_few_or_twice in [(1, 0), (1, 0, 2), (0, 0, 1, 2)]:
        with pytest.raises(RuntimeError):
            x.permute(*too_few_or_twice)

"""03 · storage: a tensor is a view (offset, shape, strides) onto a flat block of memory.

The block and how a tensor reads it; the operations that make views of it and those that copy;
and what a write through a view does, to the base, to the version counter and to backward().
"""

# %% Setup
import torch

from tensor_features.lab import Lab, Try

lab = Lab.start("03 · storage, views and copies", __doc__, __name__)


# %% [1] The storage under a tensor
# untyped_storage() is the flat block of memory under a tensor (.nbytes() its size in bytes),
# data_ptr() the address of this tensor's first element, storage_offset() how many elements into the
# block that is, and stride() how many elements to jump per index.
def storage_anatomy(lab: Lab) -> None:
    """The block under a tensor: bytes, strides, offset, and where an element sits"""
    base = torch.arange(12.0).reshape(3, 4)  # 0, 1, ..., 11 in rows of 4
    # raw bytes, no dtype (.storage() warns: TypedStorage is deprecated)
    storage = base.untyped_storage()
    lab.check(storage.nbytes(), 12 * 4, "12 float32 elements, 4 bytes each")
    lab.check(base.stride(), (4, 1), "next row: 4 elements on; next column: 1")
    lab.check((base.storage_offset(), base.is_contiguous()), (0, True),
              "from the block's start, row after row")
    lab.check(base.data_ptr() == storage.data_ptr(), True,
              "base's first element is the block's first byte")
    # Element [i, j] sits at storage_offset() + i·stride(0) + j·stride(1); arange wrote k into
    # element k.
    lab.check(base[2, 1], float(0 + 2 * 4 + 1 * 1),
              "[2, 1] is element 0 + 2·4 + 1·1 = 9 of the block")


lab.run(storage_anatomy)


# %% [2] Operations that make views
# Many operations only make a new view of the same block (slicing, view, t(), permute, expand).
def views(lab: Lab) -> None:
    """Views: new offset, shape and strides over the same block; nothing is copied"""
    base = torch.arange(12.0).reshape(3, 4)
    block = base.untyped_storage().data_ptr()  # where base's block starts
    corner = base[1:, 1:]
    lab.check(corner.untyped_storage().data_ptr() == block, True, "the slice reads base's block")
    lab.check((corner.storage_offset(), corner.stride()), (5, (4, 1)),
              "it starts at element [1, 1] = 1·4 + 1")
    lab.check(corner.data_ptr() - base.data_ptr(), 5 * 4, "5 elements × 4 bytes further on")
    lab.check((base._base.shape, corner._base is base._base), ((12,), True),
              "base is only our name: torch's ._base of both is arange's 1-D result, "
              "which reshape viewed")
    reshaped = base.view(4, 3)
    lab.check(reshaped.untyped_storage().data_ptr() == block, True, "view() never copies")
    lab.check((reshaped.shape, reshaped.stride()), ((4, 3), (3, 1)),
              "the same 12 numbers, read in rows of 3")
    transposed = base.t()
    lab.check(transposed.untyped_storage().data_ptr() == block, True, "t() moves nothing")
    lab.check((transposed.stride(), transposed.is_contiguous()), ((1, 4), False),
              "the strides swap, so the block is no longer read row after row")
    permuted = base.permute(1, 0)
    lab.check(permuted.stride(), (1, 4),
              "for 2-D, permute(1, 0) is t(); permute takes any reordering of all the axes, "
              "however many there are")
    column = torch.tensor([[1.0], [2.0], [3.0]])
    expanded = column.expand(3, 4)
    lab.check((expanded.stride(), expanded.untyped_storage().nbytes()), ((1, 0), 3 * 4),
              "stride 0 repeats the column 4 times without storing it: 3 floats, 12 bytes")


lab.run(views)


# %% [3] Operations that copy, and the view that cannot be made
# Others copy: clone(), contiguous() of a non-contiguous tensor, reshape() when no view can
# express the result.
def copies(lab: Lab) -> None:
    """Copies: when no view can express the result, and when asked for"""
    base = torch.arange(12.0).reshape(3, 4)
    block = base.untyped_storage().data_ptr()
    transposed = base.t()
    # t() row by row is elements 0, 4, 8, 1, 5, ...: +4, +4, then -7. One stride cannot say that.
    with lab.expect_error("view size is not compatible with input tensor's size and stride",
                          "t() is not contiguous; the message names the way out"):
        transposed.view(12)
    flat = transposed.reshape(12)
    lab.check(flat.untyped_storage().data_ptr() == block, False,
              "reshape copied, since no view exists")
    lab.check(flat, [0.0, 4.0, 8.0, 1.0, 5.0, 9.0, 2.0, 6.0, 10.0, 3.0, 7.0, 11.0],
              "base read column after column")
    row_major = transposed.contiguous()
    lab.check(row_major.untyped_storage().data_ptr() == block, False,
              "contiguous() of t() must copy")
    lab.check((row_major.is_contiguous(), row_major.stride()), (True, (3, 1)),
              "the copy is laid out row after row")
    lab.check(base.contiguous() is base, True,
              "already contiguous: contiguous() returns base itself")
    in_rows_of_3 = base.reshape(4, 3)
    lab.check(in_rows_of_3.untyped_storage().data_ptr() == block, True,
              "reshape returns a view when one exists "
              "(the torch.reshape docs warn not to rely on it)")
    cloned = base.clone()
    lab.check(cloned.untyped_storage().data_ptr() == block, False, "clone() always copies")


lab.run(copies)


# %% [4] Writing through a view changes the base and bumps _version
# A write through a view changes the base and raises the version counter that views share, and
# backward() refuses a graph whose saved tensor was written in place through torch after it was
# saved (the version counter sees only such writes; a write through NumPy goes unnoticed,
# 03 basics [4]).
def write_through_view(lab: Lab) -> None:
    """A write through a view lands in the base and raises the version counter they share"""
    base = torch.arange(12.0).reshape(3, 4)
    corner = base[1:, 1:]  # rows 1 and 2, columns 1 to 3
    lab.check((base._version, corner._version), (0, 0), "no in-place write yet")
    corner[0, 0] = 100.0  # an in-place write into the shared block
    lab.check(base[1, 1], 100.0, "the view's [0, 0] is the base's [1, 1]")
    lab.check((base._version, corner._version), (1, 1),
              "one counter for base and its views: one write, +1")
    copy = base.clone()
    version_of_new_copy = copy._version
    lab.check(version_of_new_copy, 0,
              "a clone is a new tensor, with a counter of its own, at 0 while base's is at 1")
    copy[0, 0] = -1.0
    lab.check((base[0, 0], base._version, copy._version), (0.0, 1, 1),
              "the write went into copy's own memory and counter: base's stayed at 1")

    leaf = torch.ones(3, requires_grad=True)
    h = leaf * 2  # not a leaf, so autograd allows in-place writes into it
    out = (h**2).sum()  # pow saves h, at version 0, for backward
    h[1:][0] = 5.0  # a write through a view of h: h is now at version 1
    with lab.expect_error("is at version 1; expected version 0 instead",
                          "backward() compares h's version now with the version pow saved; "
                          "CopySlices is the grad_fn h got when it was written through a view"):
        out.backward()


lab.run(write_through_view)


# %% The end
TRIES = [
    Try("the same offsets and strides; data_ptr() is now a GPU address",
        flags="--device cuda", needs_cuda=True),
    Try("float64: nbytes doubles to 96, so its check fails, while strides, counted in elements, "
        "stay (4, 1)",
        edit=("torch.arange(12.0).reshape(3, 4)  # 0, 1",
              "torch.arange(12.0, dtype=torch.float64).reshape(3, 4)  # 0, 1"),
        where=storage_anatomy),
    Try("the view works on the row-major copy, so the expected error never comes: that check "
        "fails", edit=("transposed.view(12)", "transposed.contiguous().view(12)"), where=copies),
    Try("the write lands in a copy: base[1, 1] stays 5 and base's counter stays at 0, so three "
        "checks disagree: those two, and the clone check that expects base's counter at 1",
        edit=("corner = base[1:, 1:]", "corner = base[1:, 1:].clone()"), where=write_through_view),
]
lab.finish(TRIES)

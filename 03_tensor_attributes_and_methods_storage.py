"""03 · storage: a tensor is a view (offset, shape, strides) onto a flat block of memory.

untyped_storage() is that block (its size in bytes), data_ptr() where this tensor's first
element sits in it, storage_offset() how many elements in that is, and stride() how far
to jump per index. Many operations only change the view and share the block (view,
slicing, t(), permute, expand); others must copy (clone(), contiguous() of a
non-contiguous tensor, reshape when no view can express the result). A write through a
view changes the base, and the version counter that autograd checks goes up.
"""

# %% Setup
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # find tensor_features when run from elsewhere

import torch

from tensor_features.lab import Lab


def shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when a and b are views onto the same storage block."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


# %% [1] The storage under a tensor
def storage_anatomy(lab: Lab) -> dict:
    lab.show("base = torch.arange(12.).reshape(3, 4)")
    base = torch.arange(12.0, device=lab.device).reshape(3, 4)
    storage = base.untyped_storage()  # untyped: raw bytes, no dtype (storage() is deprecated)
    lab.check("base.untyped_storage().nbytes()", storage.nbytes(), 12 * 4, "12 float32 elements x 4 bytes")
    lab.check("base.stride()", base.stride(), (4, 1), "next row: 4 elements on; next column: 1")
    lab.check("base.storage_offset(), is_contiguous()", (base.storage_offset(), base.is_contiguous()),
              (0, True), "starts at the block's start, row by row")
    lab.check("base.data_ptr() == storage.data_ptr()", base.data_ptr() == storage.data_ptr(), True,
              "the first element is the block's first byte")
    return {"base": base}


# %% [2] Operations that make views
def views(lab: Lab) -> dict:
    lab.show("base[1:, 1:]; base.view(4, 3); base.t(); base.permute(1, 0); torch.ones(3, 1).expand(3, 4)")
    base = torch.arange(12.0, device=lab.device).reshape(3, 4)
    corner = base[1:, 1:]
    lab.check("corner: shares, offset, stride", (shares_memory(corner, base), corner.storage_offset(),
              corner.stride()), (True, 5, (4, 1)), "starts at element [1, 1] = 1*4 + 1")
    lab.check("corner.data_ptr() - base.data_ptr()", corner.data_ptr() - base.data_ptr(), 5 * 4,
              "5 elements x 4 bytes")
    reshaped = base.view(4, 3)
    lab.check("base.view(4, 3): shares, stride", (shares_memory(reshaped, base), reshaped.stride()),
              (True, (3, 1)), "same bytes read in rows of 3")
    transposed = base.t()
    lab.check("base.t(): shares, stride, contiguous", (shares_memory(transposed, base), transposed.stride(),
              transposed.is_contiguous()), (True, (1, 4), False), "strides swapped, nothing moved")
    permuted = base.permute(1, 0)
    lab.check("base.permute(1, 0).stride()", permuted.stride(), transposed.stride(), "permute generalises t()")
    column = torch.ones(3, 1, device=lab.device)
    expanded = column.expand(3, 4)
    lab.check("expand(3, 4): stride, storage bytes", (expanded.stride(), expanded.untyped_storage().nbytes()),
              ((1, 0), 3 * 4), "stride 0 repeats a column without storing it")
    return {"corner": corner, "transposed": transposed, "expanded": expanded}


# %% [3] Operations that copy, and the view that cannot be made
def copies(lab: Lab) -> dict:
    lab.show("t = base.t(); t.view(12); t.reshape(12); t.contiguous(); base.clone(); base.contiguous()")
    base = torch.arange(12.0, device=lab.device).reshape(3, 4)
    transposed = base.t()
    # Flattening t() row by row would need one stride for two different jumps: impossible as a view.
    with lab.expect_error("view size is not compatible with input tensor's size and stride",
                          "t() is not contiguous") as caught:
        transposed.view(12)
    flat = transposed.reshape(12)
    lab.check("t.reshape(12): shares memory", shares_memory(flat, base), False, "reshape copied, since no view exists")
    lab.check("t.reshape(12)", flat, [0.0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11], "column by column of base")
    lab.check("t.contiguous(): shares, contiguous", (shares_memory(transposed.contiguous(), base),
              transposed.contiguous().is_contiguous()), (False, True), "a row-major copy")
    lab.check("base.contiguous() is base", base.contiguous() is base, True, "already contiguous: no copy")
    lab.check("base.reshape(4, 3): shares", shares_memory(base.reshape(4, 3), base), True,
              "reshape returns a view when it can")
    lab.check("base.clone(): shares", shares_memory(base.clone(), base), False, "clone always copies")
    return {"flat": flat, "error": caught.error}


# %% [4] Writing through a view changes the base and bumps _version
def write_through_view(lab: Lab) -> dict:
    lab.show("corner = base[1:, 1:]; corner[0, 0] = 100.")
    base = torch.arange(12.0, device=lab.device).reshape(3, 4)
    corner = base[1:, 1:]
    version_before = base._version
    corner[0, 0] = 100.0  # an in-place write into the shared block
    lab.check("base[1, 1]", base[1, 1], 100.0, "the view's [0, 0] is the base's [1, 1]")
    lab.check("base._version before, after", (version_before, base._version), (0, 1),
              "views share one version counter; autograd compares it at backward")
    copy = base.clone()
    copy[0, 0] = -1.0
    lab.check("base[0, 0] after copy[0, 0] = -1", base[0, 0], 0.0, "a clone has its own memory")
    return {"base": base}


# %% Run
def main(argv: list[str] | None = None) -> int:
    lab = Lab.from_argv("03 · storage, views and copies", __doc__, argv)
    storage_anatomy(lab)
    views(lab)
    copies(lab)
    write_through_view(lab)
    return lab.finish([
        "--device cuda: the same offsets and strides; data_ptr() is now a GPU address",
        "in [1], use torch.arange(12, dtype=torch.float64): nbytes doubles, strides do not change",
        "in [3], call base.t().contiguous().view(12): the view works after the copy",
    ])


if __name__ == "__main__":
    sys.exit(main())

"""04 · graph what changes it: detach, no_grad, inference_mode, eval(), in-place ops, retain_grad
and checkpointing, each seen as a change in the real graph.

04 pictured read the graph autograd records. Here one computation is read twice, as written and
with one thing changed, and the lab's graph lens (tensor_features/lab/graph.py, the reader 04
pictured uses) says what the change did to the graph: nodes and edges added or removed, saved
tensors modified in place, resized or packed away, leaf versions bumped, or nothing at all. Each
is checked against node counts, saved bytes and versions read from the real graph; chapter 05
shows the same tools from the side of the gradients.
"""

# %% Setup
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tensor_features.lab import Lab, Try
from tensor_features.lab.graph import read_graph

lab = Lab.start("04 · graph what changes it", __doc__, __name__)


def saved_bytes(graph) -> int:
    """Bytes of elements (numel × element_size) of the saved tensors a reading found held,
    counted slot by slot: a tensor two nodes saved counts twice."""
    return sum(saved.tensor.nbytes for node in graph.nodes for saved in node.saved
               if saved.state == "held")


# %% [1] detach(): a branch cut off
# x.detach() is x's value without its history, so 2 * x.detach() needs no gradient: its Mul is
# not recorded, and Add's second input becomes a None edge. x now reaches y by one path only, and
# its gradient loses the other path's share: 2x = 6 instead of 2x + 2 = 8.
def detach_cuts_a_branch(lab: Lab) -> None:
    """y = x**2 + 2x, then y = x**2 + 2 * x.detach(), at x = 3"""
    x = torch.tensor(3.0, requires_grad=True)
    before = read_graph(x**2 + 2 * x, names={"x": x})
    y = x**2 + 2 * x.detach()
    after = read_graph(y, names={"x": x})
    changes = lab.graph_diff(before, after)
    lab.check([node.name for node in changes.removed], ["MulBackward0"],
              "the branch through 2 * x is gone, Mul and its edges")
    lab.check(after.nodes[0].inputs, ("n1", None),
              "Add's second input needs no gradient now: a None edge")
    y.backward()
    lab.check(x.grad, 6.0, "only x**2's share reaches x: 2x at x = 3")


lab.run(detach_cuts_a_branch)


# %% [2] torch.no_grad() and torch.inference_mode(): nothing recorded
# Inside either block, an op records no node even when its input requires grad: the result has
# no grad_fn, so there is no graph at all. inference_mode also marks its results as inference
# tensors, which autograd refuses to save for a graph built later.
def nothing_recorded(lab: Lab) -> None:
    """y = x**2 + 2x at x = 3, under torch.no_grad(), then under torch.inference_mode()"""
    x = torch.tensor(3.0, requires_grad=True)
    before = read_graph(x**2 + 2 * x, names={"x": x})
    with torch.no_grad():
        y = x**2 + 2 * x
    changes = lab.graph_diff(before, read_graph(y, names={"x": x}))
    lab.check((len(changes.removed), len(changes.added)), (4, 0),
              "all four nodes removed: Add, Pow, Mul and x's AccumulateGrad")
    with torch.inference_mode():
        y = x**2 + 2 * x
    lab.check((len(read_graph(y).nodes), y.requires_grad, y.is_inference()), (0, False, True),
              "no graph either, and y is an inference tensor")
    with lab.expect_error("Inference tensors cannot be saved for backward",
                          "x * y would save y for x's gradient; an inference tensor cannot be"):
        x * y


lab.run(nothing_recorded)


# %% [3] model.eval(): still recorded, with what the layers compute in eval mode
# eval() is not no_grad(): it switches Dropout and BatchNorm to their evaluation behaviour, and
# the graph is recorded as before, with a leaf for every parameter. What changes is what those
# layers compute: in eval mode dropout returns its input unchanged, so its node (a Mul by the
# scaled mask, on the CPU) is gone; batch norm normalizes with its running statistics, so the
# result1 and result2 it saves, in training the batch's mean and 1/sqrt(var + eps) (4 numbers
# each, 32 bytes in all), are saved empty.
def eval_still_records(lab: Lab) -> None:
    """Linear(3, 4), BatchNorm1d(4), Dropout(0.5), Linear(4, 1) on 8 rows: train(), then eval()"""
    # On the CPU whatever --device says: on CUDA, dropout runs as native_dropout, another node
    # keeping a bool mask (aten/src/ATen/native/Dropout.cpp, is_fused_kernel_acceptable), and
    # batch norm keeps its 4-number result1 and result2 in eval mode too (cuda/Normalization.cu).
    with torch.device("cpu"):
        torch.manual_seed(0)  # the same weights and rows on every run
        model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5),
                              nn.Linear(4, 1))
        rows = torch.randn(8, 3)
    parameters = dict(model.named_parameters())
    before = read_graph(model(rows).mean(), names=parameters)
    model.eval()
    after = read_graph(model(rows).mean(), names=parameters)
    changes = lab.graph_diff(before, after)
    lab.check([node.name for node in changes.removed + changes.added], ["MulBackward0"],
              "one node fewer, dropout's; every other node is still recorded")
    leaves = sorted(node.leaf.tensor.name for node in after.nodes if node.leaf is not None)
    lab.check(leaves, sorted(parameters), "a leaf for each of the 6 parameters, as in training")
    lab.check(saved_bytes(before) - saved_bytes(after), 128 + 32,
              "dropout's mask (8 × 4 × 4 bytes) and batch norm's batch statistics (2 × 4 × 4) "
              "are no longer kept")


lab.run(eval_still_records)


# %% [4] An in-place op on a saved tensor: the version counter
# Every tensor outside inference mode has a version counter (_version), shared with its views,
# which each in-place op bumps. A node that saves a tensor remembers the version it saw, and
# backward() refuses a saved tensor whose version moved: its values may no longer be the ones
# the derivative needs. Here x**2 saved x, and an update x.mul_(2), inside no_grad as an
# optimizer step is (outside it, torch refuses an in-place op on a leaf that requires grad), bumps
# x from version 0 to 1.
def in_place_bumps_the_version(lab: Lab) -> None:
    """y = (x**2).sum(), then x doubled in place under no_grad, before y.backward()"""
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = (x**2).sum()
    before = read_graph(y, names={"x": x})
    with torch.no_grad():
        x.mul_(2)  # in place: the same tensor, the same storage, its version + 1
    changes = lab.graph_diff(before, read_graph(y, names={"x": x}))
    lab.check([(change.name, change.slot, change.after) for change in changes.saved],
              [("PowBackward0", "self", "modified in place")],
              "pow's saved x is no longer the x it saw")
    lab.check([(bump.name, bump.before, bump.after) for bump in changes.versions], [("x", 0, 1)],
              "one in-place write into x")
    with lab.expect_error("modified by an inplace operation",
                          "backward() checks each saved tensor's version before using it"):
        y.backward()


lab.run(in_place_bumps_the_version)


# %% [5] Writing into a slice: CopySlices
# h[0] = 0 writes into h in place. h has a history (h = x * 2), so autograd replaces h's grad_fn
# with a CopySlices node whose first input is the old one, Mul: backward passes h's gradient on
# to Mul with the overwritten entry set to zero. The graph gained a node; nothing was removed.
def slice_write_adds_copyslices(lab: Lab) -> None:
    """h = x * 2, then h[0] = 0.0, then h.sum().backward()"""
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    h = x * 2
    before = read_graph(h, names={"x": x})
    h[0] = 0.0
    after = lab.graph(h, names={"x": x})
    changes = lab.graph_diff(before, after)
    lab.check(([node.name for node in changes.added], changes.removed), (["CopySlices"], ()),
              "one node added at the top, above Mul; nothing removed")
    lab.check(h._version, 1, "one in-place write into h")
    h.sum().backward()
    lab.check(x.grad, [0.0, 2.0, 2.0], "the overwritten element gets no gradient, the rest 2")


lab.run(slice_write_adds_copyslices)


# %% [6] retain_grad(): no change in the graph
# h.retain_grad() asks backward() to keep h's gradient, which a non-leaf does not keep by default.
# It adds no node, no edge and no saved tensor: it registers a hook on h's grad_fn (in C++, not
# visible to the lens) that puts the passing gradient into h.grad (adds it, on a later backward).
def retain_grad_changes_nothing(lab: Lab) -> None:
    """y = (h**2).sum() with h = x * 2, before and after h.retain_grad()"""
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    h = x * 2
    y = (h**2).sum()
    before = read_graph(y, names={"x": x, "h": h})
    h.retain_grad()
    changes = lab.graph_diff(before, read_graph(y, names={"x": x, "h": h}))
    lab.check(changes.empty, True, "same nodes, edges, saved tensors and versions")
    y.backward()
    lab.check(h.grad, [4.0, 8.0, 12.0], "dy/dh = 2h, kept as it passed through h's node")


lab.run(retain_grad_changes_nothing)


# %% [7] Checkpointing: the same nodes, their tensors packed away
# checkpoint(block, rows) runs the block without keeping what its nodes would save. It sets a
# pack hook (torch.autograd.graph.saved_tensors_hooks: a function given each tensor as it is
# saved, which returns what to keep instead): each saved tensor is replaced by a placeholder, and
# backward() calls the block again to recompute them (stopping, by default, once the last one is
# recomputed). The graph has the same 13 nodes; their 11 saved slots, 112 KiB counted slot by
# slot (8 distinct tensors: 3 mm inputs are the tanh results saved beside them), are packed
# away. What that frees is the 4 tanh results, 32 KiB: the weights and rows stay alive anyway,
# as parameters and as the block's input. The price is the block's forward, run again in
# backward; the gradients are the same. This is
# use_reentrant=False, the variant torch's docs recommend; the older use_reentrant=True records
# the whole block as one CheckpointFunctionBackward node, and nothing at all when no input of the
# block requires grad.
def checkpoint_packs_saved_tensors(lab: Lab) -> None:
    """4 × tanh(h @ W) on 32 rows of 64, plain and under checkpoint"""
    torch.manual_seed(0)
    weights = [torch.randn(64, 64, requires_grad=True) for _ in range(4)]
    rows = torch.randn(32, 64)
    names = {f"W{i}": weight for i, weight in enumerate(weights)}
    forwards = 0

    def block(h: torch.Tensor) -> torch.Tensor:
        nonlocal forwards
        forwards += 1
        for weight in weights:
            h = torch.tanh(h @ weight)
        return h

    plain = block(rows).sum()
    before = read_graph(plain, names=names)
    plain.backward()
    plain_grads = [weight.grad.clone() for weight in weights]
    for weight in weights:
        weight.grad = None
    checkpointed = checkpoint(block, rows, use_reentrant=False).sum()
    after = read_graph(checkpointed, names=names)
    changes = lab.graph_diff(before, after)
    lab.check((len(before.nodes), len(changes.removed), len(changes.added)), (13, 0, 0),
              "the same 13 nodes: 4 mm, 4 tanh, the sum and 4 AccumulateGrad")
    lab.check(sorted({(change.before, change.after) for change in changes.saved}),
              [("held", "packed by a hook")], "each saved tensor replaced by a placeholder")
    lab.check((len(changes.saved), saved_bytes(before), saved_bytes(after)), (11, 114688, 0),
              "slot by slot: 4 tanh results and 4 mm inputs of 32 × 64 (3 of them the tanh "
              "results again), 3 weights of 64 × 64, 4 bytes each (the first mm keeps no W0: "
              "rows needs no gradient); none held now")
    checkpointed.backward()
    lab.check(forwards, 3,
              "entered by the plain forward, the checkpointed one, and the rerun in backward")
    lab.check(torch.stack([w.grad for w in weights]), torch.stack(plain_grads),
              "the same gradients: the rerun computes the same tensors (a bound, not bit for bit: "
              "oneMKL, for one, may round otherwise for memory aligned otherwise: its notes on "
              "conditional numerical reproducibility)", rtol=1e-5, atol=1e-4)


lab.run(checkpoint_packs_saved_tensors)


# %% The end
TRIES = [
    Try("x = x * 2 in place of x.mul_(2): a new tensor, so the graph keeps the old x unchanged, "
        "backward() works, and the checks of [4] disagree",
        edit=("        x.mul_(2)  #", "        x = x * 2  #"), where=in_place_bumps_the_version),
    Try("Dropout(0.0): dropout records no node in training mode either, so the eval diff "
        "removes nothing and its checks disagree",
        edit=("nn.Dropout(0.5)", "nn.Dropout(0.0)"), where=eval_still_records),
    Try("block(rows) in place of the checkpoint: the nodes keep their 112 KiB again and the "
        "block is entered only twice, so the checks of [7] fail",
        edit=("checkpoint(block, rows, use_reentrant=False)", "block(rows)"),
        where=checkpoint_packs_saved_tensors),
]
lab.finish(TRIES)

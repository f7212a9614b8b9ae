"""06 · saved tensors: what the graph keeps for backward, how to hook it, and checkpointing.

Backward needs some forward values (d(a·b)/da = b), so the graph keeps them: the saved tensors.
The lesson reads them, hooks their saving and their reading back, changes one in place, and
trades them for a second forward with torch.utils.checkpoint.
"""

# %% Setup
import math

import torch
from torch.autograd.graph import saved_tensors_hooks
from torch.utils.checkpoint import checkpoint

from tensor_features.lab import Lab, Try

lab = Lab.start("06 · saved tensors", __doc__, __name__)


# %% [1] Which tensors a graph saves
# Which tensors mul and exp save, read from their grad_fn: mul saves both inputs, exp its own
# result. The graph of y + e shows both nodes at once, each saved tensor named when it is one of
# the lesson's tensors by identity: mul's are a and b themselves; exp's result has e's values but
# is not the object e, so it carries no name.
def what_is_saved(lab: Lab) -> None:
    """What y = a * b and e = exp(a) save for backward, read from grad_fn._saved_*"""
    a = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = torch.tensor([4.0, 5.0, 6.0], requires_grad=True)
    y = a * b  # dy/da = b, dy/db = a: mul saves both inputs
    lab.check((y.grad_fn._saved_self is a, y.grad_fn._saved_other is b), (True, True),
              "the very tensor objects a and b, not copies")
    e = torch.exp(a)  # d exp(a)/da = exp(a): exp saves its own result
    saved = e.grad_fn._saved_result
    # The graph cannot hold its own output without a reference cycle, so it packs e and hands
    # back a new tensor object on the same memory. Whether a saved tensor comes back as a new
    # object "is an implementation detail subject to change" (docs/source/notes/autograd.md,
    # "Saved tensors").
    lab.check(saved is e, False, "a new Python object ...")
    lab.check(torch.equal(saved, e), True, "... with e's values")
    lab.check(saved.data_ptr() == e.data_ptr(), True, "... on e's memory: nothing was copied")
    both = y + e  # one graph holding both nodes, to see what each keeps
    graph = lab.graph(both, names={"a": a, "b": b, "y": y, "e": e, "both": both})
    lab.check([(node.name, kept.slot, kept.tensor.name)
               for node in graph.nodes for kept in node.saved],
              [("MulBackward0", "other", "b"), ("MulBackward0", "self", "a"),
               ("ExpBackward0", "result", None)],
              "mul keeps a and b themselves; exp keeps a tensor that is not e, so no name")


lab.run(what_is_saved)


# %% [2] saved_tensors_hooks: pack in the forward, unpack in the backward
# saved_tensors_hooks is a pack/unpack pair that runs when a tensor is saved and when backward
# reads it back; here both only count their calls.
def pack_unpack_counts(lab: Lab) -> None:
    """Count pack calls during the forward and unpack calls during the backward"""
    a = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = torch.tensor([4.0, 5.0, 6.0], requires_grad=True)
    packs, unpacks = [], []

    def count_pack(tensor):  # returns tensor itself: only the count changes
        packs.append(tuple(tensor.shape))
        return tensor

    def count_unpack(packed):  # returns what count_pack returned
        unpacks.append(tuple(packed.shape))
        return packed

    with saved_tensors_hooks(count_pack, count_unpack):
        y = a * b
    lab.check((len(packs), len(unpacks)), (2, 0),
              "the forward saved a and b; nothing was read back yet")
    y.sum().backward()  # outside the with: the hooks stay attached to what was saved inside it
    lab.check((len(packs), len(unpacks)), (2, 2), "backward read each saved tensor back once")
    lab.check((a.grad, b.grad), ([4.0, 5.0, 6.0], [1.0, 2.0, 3.0]), "dy/da = b, dy/db = a")


lab.run(pack_unpack_counts)


# %% [3] A pack that changes the tensor, and an unpack that undoes it
# A ÷4/×4 round trip: pack stores x / 4 in the graph instead of x, and unpack multiplies by 4
# before backward reads it, so the gradient stays right.
def divide_and_multiply(lab: Lab) -> None:
    """pack divides by 4, unpack multiplies by 4: the gradient stays right"""
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    kept = []

    # "The output of pack_hook is then stored in the computation graph instead of the original
    # tensor" (pytorch/tutorials: intermediate_source/autograd_saved_tensors_hooks_tutorial.py).
    def divide_by_4(tensor):
        kept.append(tensor / 4)
        return kept[-1]

    with saved_tensors_hooks(divide_by_4, lambda packed: packed * 4):
        y = x**2  # pow saves x, through divide_by_4
    lab.check(kept, [[0.25, 0.5, 0.75]], "one saved tensor, and the graph holds x / 4, not x")
    y.sum().backward()
    lab.check(x.grad, [2.0, 4.0, 6.0], "2x: unpack gave backward (x / 4) · 4 = x")


lab.run(divide_and_multiply)


# %% [4] Saved tensors moved to the CPU
# Moving saved tensors to the CPU: pack copies each one there, unpack moves it back to its
# device.
def offload_to_cpu(lab: Lab) -> None:
    """Pack each saved tensor to the CPU, unpack it back to its device: the offload idea"""
    torch.manual_seed(0)
    w = torch.randn(64, 64, requires_grad=True)
    # An input that needs no gradient, so matmul does not save w: w is saved only to compute h's
    # gradient (compare [6], where h needs one).
    h = torch.randn(32, 64)
    held = []

    def to_cpu(tensor):  # returns (its device, the tensor on the CPU)
        held.append(tensor.to("cpu"))
        return (tensor.device, held[-1])

    def back_to_device(packed):  # returns the tensor on its own device again
        device, on_cpu = packed
        return on_cpu.to(device)

    with saved_tensors_hooks(to_cpu, back_to_device):
        out = torch.tanh(h @ w)
    lab.check([tuple(t.shape) for t in held], [(32, 64), (32, 64)],
              "h, for dL/dw = hᵀ·g, and tanh's output, for 1 - out²")
    held_bytes = sum(t.numel() * t.element_size() for t in held)
    lab.check(held_bytes, 2 * 32 * 64 * 4, "two 32×64 float32 tensors")
    # Tensor.to returns self when the tensor already has that device and dtype
    # (torch/_tensor_docs.py, Tensor.to): on the CPU nothing moves; with --device cuda each saved
    # tensor is copied off the GPU.
    lab.check(held[0] is h, lab.device.type == "cpu", "h itself on the CPU, a copy from a GPU")
    out.sum().backward()
    lab.check(w.grad, h.T @ (1 - out**2), "hᵀ(1 - out²): the gradient survives the round trip",
              atol=1e-5)


lab.run(offload_to_cpu)


# %% [5] Changing a saved tensor in place
# Changing a saved tensor in place makes backward raise; inside
# allow_mutation_on_saved_tensors, the graph keeps the tensor as it was when saved.
def mutation_on_saved(lab: Lab) -> None:
    """An in-place change to a saved tensor: an error, unless allow_mutation_on_saved_tensors"""
    a = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = a.clone()
    y = (b**2).sum()  # pow saves b
    b.sin_()  # b changes after it was saved
    with lab.expect_error("modified by an inplace operation",
                          "sin_ moved b to version 1; the graph saved it at version 0"):
        y.backward()
    with torch.autograd.graph.allow_mutation_on_saved_tensors():
        b = a.clone()
        y = (b**2).sum()
        # inside the context the saved b is cloned before sin_ changes it (torch/autograd/graph.py)
        b.sin_()
        y.backward()
    lab.check(a.grad, [2.0, 4.0, 6.0], "2a: backward used b as it was when saved")
    lab.check(b, [math.sin(1.0), math.sin(2.0), math.sin(3.0)], "while b itself did change")


lab.run(mutation_on_saved)


# %% [6] Checkpointing: what the forward saves
# torch.utils.checkpoint saves only its input in the forward; the plain forward saves, per
# layer, the matmul's input and weight and tanh's output.
def tanh_layers(count: int, width: int,
                device: torch.device | str | None = None) -> torch.nn.Sequential:
    """count layers of tanh(h @ Wᵀ): a Linear without bias, then Tanh, each width → width; on
    the default device unless told (bench/rows/checkpoint.py, outside any lab.run, names one)."""
    layers = torch.nn.Sequential()
    for _ in range(count):
        layers.append(torch.nn.Linear(width, width, bias=False, device=device))
        layers.append(torch.nn.Tanh())
    return layers


def checkpoint_saves(lab: Lab) -> None:
    """Four tanh(h @ Wᵀ) layers on 32×64: tensors packed without and with \
checkpoint(use_reentrant=False)"""
    torch.manual_seed(0)
    layers = tanh_layers(4, 64)  # 4 layers, each 64 → 64
    x = torch.randn(32, 64, requires_grad=True)
    packed = []

    def record(tensor):  # returns tensor itself: only the record changes
        packed.append(tensor)
        return tensor

    with saved_tensors_hooks(record, lambda kept: kept):
        out = layers(x)
    plain = (len(packed), sum(t.numel() for t in packed))
    lab.check(plain, (12, 32768),
              "per layer, h (32×64) and W (64×64) for the matmul, out (32×64) for tanh")
    storages = {t.untyped_storage().data_ptr() for t in packed}
    weights = {w.untyped_storage().data_ptr() for w in layers.parameters()}
    lab.check((len(storages), len(storages - weights)), (9, 5),
              "12 packs are references to 9 storages: 4 weights, which exist anyway, and 5 "
              "activations, x and 4 tanh outputs (each but the last packed again as the next "
              "layer's input)")
    packed.clear()
    with saved_tensors_hooks(record, lambda kept: kept):
        out = checkpoint(layers, x, use_reentrant=False)
    checkpointed = (len(packed), sum(t.numel() for t in packed))
    # Only the innermost pair of hooks applies (torch/autograd/graph.py), and checkpoint puts its
    # own pair around the layers; it saves its input x just before (torch/utils/checkpoint.py).
    lab.check(checkpointed, (1, 2048),
              "only checkpoint's input, 32×64; the layers' saves are not kept")
    lab.check(packed[0] is x, True, "the one saved tensor is x itself")


lab.run(checkpoint_saves)


# %% [7] Checkpointing: the forward runs again in backward, and the gradient is the same
# In exchange, checkpoint runs the forward again during backward, to rebuild what it did not
# save; the gradient is the same as without it.
def checkpoint_recomputes(lab: Lab) -> None:
    """checkpoint runs the forward twice; the gradient equals the plain one"""
    torch.manual_seed(0)
    layers = tanh_layers(4, 64)
    x = torch.randn(32, 64, requires_grad=True)
    runs = []
    layers.register_forward_pre_hook(lambda module, args: runs.append("forward"))
    out = checkpoint(layers, x, use_reentrant=False)
    lab.check(len(runs), 1, "the forward ran once")
    checkpointed_grads = torch.autograd.grad(out.sum(), [x, *layers.parameters()])
    lab.check(len(runs), 2, "backward ran the forward again, to rebuild what was not saved")
    plain_grads = torch.autograd.grad(layers(x).sum(), [x, *layers.parameters()])
    largest_difference = max((c - p).abs().max().item()
                             for c, p in zip(checkpointed_grads, plain_grads))
    lab.check(largest_difference, 0.0, "the same ops on the same values: the same gradient",
              atol=0)


lab.run(checkpoint_recomputes)


# %% [8] The reentrant checkpoint and autograd.grad
# The reentrant checkpoint (use_reentrant=True) does not work with torch.autograd.grad.
def reentrant_and_grad(lab: Lab) -> None:
    """checkpoint(use_reentrant=True), the reentrant variant, with torch.autograd.grad"""
    torch.manual_seed(0)
    layers = tanh_layers(4, 64)
    x = torch.randn(32, 64, requires_grad=True)
    # use_reentrant=True is the variant checkpoint falls back to, with a warning, when
    # use_reentrant is not passed; the docs recommend use_reentrant=False. It is a custom Function
    # (06 custom Function) that runs the layers under no_grad, and whose backward runs them again
    # and calls torch.autograd.backward inside the backward already running: a "reentrant"
    # backward (CheckpointFunction, torch/utils/checkpoint.py).
    out = checkpoint(layers, x, use_reentrant=True)
    lab.check(type(out.grad_fn).__name__, "CheckpointFunctionBackward",
              "one custom Function node for all four layers: their ops were not recorded")
    with lab.expect_error("torch.utils.checkpoint is incompatible with .grad()",
                          "the reentrant variant supports only .backward() without inputs "
                          "(torch/utils/checkpoint.py)"):
        torch.autograd.grad(out.sum(), x)
    out.sum().backward()
    lab.check(x.grad.shape, (32, 64), ".backward() without inputs works")


lab.run(reentrant_and_grad)


# %% The end
TRIES = [
    Try("the same checks with the saved tensors on the GPU; in [4] they are copied to the CPU",
        flags="--device cuda",
        needs_cuda=True),
    Try("unpack no longer undoes the ÷4: backward computes 2 · x/4, and the check fails",
        edit=("lambda packed: packed * 4", "lambda packed: packed"),
        where=divide_and_multiply),
    Try("eight layers: the plain forward packs twice as much, from 17 storages, and its checks "
        "fail; the checkpoint still packs only x",
        edit=("layers = tanh_layers(4, 64)", "layers = tanh_layers(8, 64)"),
        where=checkpoint_saves),
]
lab.finish(TRIES)

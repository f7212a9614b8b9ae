"""06 saved tensors: every value the lesson's checks saw (and the locals its observations left),
against oracles written here: analytic gradients, a hand-written float64 backprop through the tanh
layers, pack/unpack and saved-element counts from the layer shapes; and bench row 7
(checkpointing), at tiny sizes, against the same shape arithmetic (no timing is asserted).
TRY_PROMISES: what each of the lesson's Try lines does (tests/lab/test_tries.py)."""

import math

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from bench.measure import MB
from bench.rows import checkpoint as row
from tests.support import Promise, assert_caught, load_lesson

lesson = load_lesson("06_extending_autograd_saved_tensors.py")

# The lesson's Try lines, in order: the exit code and the text each adds to the output.
TRY_PROMISES = [
    Promise(shows=("device cuda",)),
    Promise(exit=1, shows=("FAIL  x.grad = [0.5, 1.0, 1.5]",)),
    Promise(exit=1, shows=("FAIL  plain = (24, 65536)", "  ok  checkpointed = (1, 2048)")),
]

MUTANTS = [
    ("06_extending_autograd_saved_tensors.py", "    y = a * b  # dy/da = b", "    y = a * b.detach()  # dy/da = b"),
    ("06_extending_autograd_saved_tensors.py", "        y = a * b\n    lab.check((len(packs)", "        y = a * 2\n    lab.check((len(packs)"),
    ("06_extending_autograd_saved_tensors.py", "kept.append(tensor / 4)", "kept.append(tensor / 2)"),
    ("06_extending_autograd_saved_tensors.py", "        return kept[-1]\n", "        return tensor\n"),
    ("06_extending_autograd_saved_tensors.py", "storages = {t.untyped_storage().data_ptr() for t in packed}",
     "storages = {id(t) for t in packed}"),
    ("06_extending_autograd_saved_tensors.py", "out = torch.tanh(h @ w)", "out = torch.sigmoid(h @ w)"),
    ("06_extending_autograd_saved_tensors.py", "    with torch.autograd.graph.allow_mutation_on_saved_tensors():", "    if True:"),
    ("06_extending_autograd_saved_tensors.py", "        out = checkpoint(layers, x, use_reentrant=False)\n    checkpointed",
     "        out = layers(x)\n    checkpointed"),
    ("06_extending_autograd_saved_tensors.py", "    out = checkpoint(layers, x, use_reentrant=False)\n    lab.check(len(runs), 1",
     "    out = layers(x)\n    lab.check(len(runs), 1"),
    ("06_extending_autograd_saved_tensors.py", "out = checkpoint(layers, x, use_reentrant=True)", "out = checkpoint(layers, x, use_reentrant=False)"),
    ("06_extending_autograd_saved_tensors.py", "layers.append(torch.nn.Tanh())", "layers.append(torch.nn.Sigmoid())"),
    # [1]: the graph without exp's node, or b not named
    ("06_extending_autograd_saved_tensors.py",
     "    both = y + e  # one", "    both = y + e.detach()  # one"),
    ("06_extending_autograd_saved_tensors.py",
     'names={"a": a, "b": b, "y": y, "e": e, "both": both}',
     'names={"a": a, "b": b.detach(), "y": y, "e": e, "both": both}'),
    ("bench/rows/checkpoint.py", "return max(1, math.isqrt(layers))", "return max(1, math.isqrt(layers) + 1)"),
    ("bench/rows/checkpoint.py", "storages[storage.data_ptr()] = storage.nbytes()",
     "storages[len(storages)] = storage.nbytes()"),
]

# Written by a tester who had not read these tests, from the lessons and the package alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # ---------------------------------------------------------------- 06 saved tensors
    # pack_unpack_counts(): b detached: mul saves only b, packs = 1, b.grad None
    ('06_extending_autograd_saved_tensors.py', '    with saved_tensors_hooks(count_pack, count_unpack):\n        y = a * b\n', '    with saved_tensors_hooks(count_pack, count_unpack):\n        y = a * b.detach()\n'),
    # checkpoint_saves(): the "checkpointed" forward is the plain forward: (12, 32768) not (1, 2048)
    ('06_extending_autograd_saved_tensors.py', '        out = checkpoint(layers, x, use_reentrant=False)\n    checkpointed = ', '        out = layers(x)\n    checkpointed = '),
    # checkpoint_recomputes(): the oracle compared with itself: plain_grads is checkpointed_grads, runs = 2
    ('06_extending_autograd_saved_tensors.py', 'plain_grads = torch.autograd.grad(layers(x).sum(), [x, *layers.parameters()])', 'plain_grads = checkpointed_grads'),
    # divide_and_multiply(): unpack divides again instead of multiplying: x.grad = 2x/16
    ('06_extending_autograd_saved_tensors.py', 'with saved_tensors_hooks(divide_by_4, lambda packed: packed * 4):', 'with saved_tensors_hooks(divide_by_4, lambda packed: packed / 4):'),
]


def hand_backprop(layers: torch.nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """d sum(h_L) / d(x, W_1, ..., W_L) for h_k = tanh(h_{k-1} W_kᵀ), by hand, in float64."""
    weights = [m.weight.detach().double().cpu() for m in layers if isinstance(m, torch.nn.Linear)]
    hs = [x.detach().double().cpu()]
    for w in weights:
        hs.append(torch.tanh(hs[-1] @ w.T))
    grad = torch.ones_like(hs[-1])
    weight_grads = []
    for w, h_in, h_out in zip(reversed(weights), reversed(hs[:-1]), reversed(hs[1:])):
        pre = grad * (1 - h_out**2)  # tanh' = 1 - tanh²
        weight_grads.append(pre.T @ h_in)
        grad = pre @ w
    return [grad, *reversed(weight_grads)]


def test_what_is_saved(lab):
    seen = lab.run(lesson.what_is_saved)
    made = seen.names
    assert made["y"].grad_fn._saved_self is made["a"] and made["y"].grad_fn._saved_other is made["b"]
    assert made["saved"] is not made["e"]
    assert made["saved"].cpu().tolist() == pytest.approx([math.exp(v) for v in (1.0, 2.0, 3.0)])
    assert made["saved"].data_ptr() == made["e"].data_ptr()
    # The reading of both = y + e: named by identity, mul's saved tensors are a and b, exp's is
    # another object than e (so no name).
    label = ("[(node.name, kept.slot, kept.tensor.name) "
             "for node in graph.nodes for kept in node.saved]")
    assert seen[label] == [("MulBackward0", "other", "b"), ("MulBackward0", "self", "a"),
                           ("ExpBackward0", "result", None)]
    # torch's own nodes, walked from both: add -> (mul, exp); what each saved, read directly.
    (mul, _), (exp, _) = made["both"].grad_fn.next_functions
    assert mul is made["y"].grad_fn and exp is made["e"].grad_fn
    assert mul._saved_self is made["a"] and mul._saved_other is made["b"]
    assert exp._saved_result is not made["e"] and torch.equal(exp._saved_result, made["e"])
    assert exp.next_functions[0][0] is mul.next_functions[0][0]  # one AccumulateGrad for a
    # Two lines of the tree, by hand: mul's inputs as written in the lesson, exp's result unnamed.
    lines = seen["graph"].splitlines()
    assert lines[2] == ("    n1 MulBackward0  saved other = b (shape (3,), float32, 12 bytes, "
                        "value [4.0, 5.0, 6.0]); self = a (shape (3,), float32, 12 bytes, "
                        "value [1.0, 2.0, 3.0])")
    assert lines[5].startswith("    n4 ExpBackward0  saved result (shape (3,), float32, 12 bytes")


def test_pack_unpack_counts(lab):
    seen = lab.run(lesson.pack_unpack_counts)
    made = seen.names
    # mul saves a and b, each read once, and only in the backward
    assert made["packs"] == [(3,), (3,)] and made["unpacks"] == [(3,), (3,)]
    assert seen.every("(len(packs), len(unpacks))") == [(2, 0), (2, 2)]
    a_grad, b_grad = seen["(a.grad, b.grad)"]
    assert a_grad.cpu().tolist() == [4.0, 5.0, 6.0]  # dy/da = b
    assert b_grad.cpu().tolist() == [1.0, 2.0, 3.0]  # dy/db = a


def test_divide_and_multiply_keeps_x_over_4_and_2x(lab):
    seen = lab.run(lesson.divide_and_multiply)
    x = [1.0, 2.0, 3.0]
    # pow saves x once, packed as x / 4
    assert [t.cpu().tolist() for t in seen["kept"]] == [[v / 4 for v in x]]
    assert seen["x.grad"].cpu().tolist() == [2 * v for v in x]


def test_offload_bytes_and_gradient(lab):
    seen = lab.run(lesson.offload_to_cpu)
    made = seen.names
    assert [tuple(t.shape) for t in made["held"]] == [(32, 64), (32, 64)]
    assert seen["held_bytes"] == 2 * 32 * 64 * 4
    assert sum(t.numel() * t.element_size() for t in made["held"]) == 2 * 32 * 64 * 4
    assert all(t.device.type == "cpu" for t in made["held"])
    h, w = made["h"].double().cpu(), made["w"].detach().double().cpu()
    analytic = h.T @ (1 - torch.tanh(h @ w) ** 2)  # d sum(tanh(h w)) / dw
    assert torch.allclose(seen["w.grad"].double().cpu(), analytic, atol=1e-4)


def test_mutation_on_saved(lab):
    seen = lab.run(lesson.mutation_on_saved)
    assert_caught(seen["error"], RuntimeError, "modified by an inplace operation")
    # d sum(a²)/da with the saved, unmutated b = a
    assert seen["a.grad"].cpu().tolist() == [2.0, 4.0, 6.0]
    assert seen["b"].cpu().tolist() == pytest.approx([math.sin(v) for v in (1.0, 2.0, 3.0)])


def test_checkpoint_saves_from_the_shapes(lab):
    seen = lab.run(lesson.checkpoint_saves)
    layers, batch, width = 4, 32, 64
    # Per layer: the matmul saves its input (batch × width) and the weight (width × width), tanh
    # its output.
    assert seen["plain"] == (3 * layers, layers * (batch * width + width * width + batch * width))
    assert seen["plain"] == (12, 32768)
    assert seen["checkpointed"] == (1, batch * width)
    assert seen.names["packed"][0] is seen.names["x"]
    # Storages: every weight, x, and each layer's tanh output (the next layer's input is that same
    # output).
    assert seen["(len(storages), len(storages - weights))"] == (layers + 1 + layers, 1 + layers)


def test_pack_calls_count_references_not_storages():
    """Backs the lesson's note: 12 packs, but the activations held are x and the 4 tanh outputs."""
    layers = lesson.tanh_layers(4, 64)
    x = torch.randn(32, 64, requires_grad=True)
    packed = []
    with saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        layers(x)
    weights = {p.untyped_storage().data_ptr() for p in layers.parameters()}
    storages = [t.untyped_storage().data_ptr() for t in packed]
    activations = {s for s in storages if s not in weights}
    assert len(packed) == 12 and len(activations) == 4 + 1
    assert {s for s in storages if s in weights} == weights  # every weight is packed, and they exist anyway


def test_checkpoint_recomputes_and_matches_hand_backprop(lab):
    seen = lab.run(lesson.checkpoint_recomputes)
    made = seen.names
    assert seen.every("len(runs)") == [1, 2]
    # the checkpointed forward, its recompute, then the plain forward
    assert made["runs"] == ["forward"] * 3
    expected = hand_backprop(made["layers"], made["x"])
    for checkpointed, plain, oracle in zip(made["checkpointed_grads"], made["plain_grads"],
                                           expected, strict=True):
        assert torch.allclose(checkpointed.double().cpu(), oracle, atol=1e-5)
        assert torch.allclose(plain.double().cpu(), oracle, atol=1e-5)


def test_reentrant_checkpoint_and_grad(lab):
    seen = lab.run(lesson.reentrant_and_grad)
    made = seen.names
    assert_caught(seen["error"], RuntimeError, "torch.utils.checkpoint is incompatible with .grad()")
    expected_x_grad = hand_backprop(made["layers"], made["x"])[0]
    assert torch.allclose(made["x"].grad.double().cpu(), expected_x_grad, atol=1e-5)
    assert seen["x.grad.shape"] == (32, 64)
    assert seen["type(out.grad_fn).__name__"] == "CheckpointFunctionBackward"


def test_checkpoint_without_use_reentrant_warns_and_falls_back_to_the_reentrant_variant():
    """Backs [8]'s comment: no use_reentrant means a warning, then the custom Function of use_reentrant=True."""
    layers = lesson.tanh_layers(2, 8)
    x = torch.randn(4, 8, requires_grad=True)
    with pytest.warns(UserWarning, match="the use_reentrant parameter should be passed explicitly"):
        out = torch.utils.checkpoint.checkpoint(layers, x)
    assert type(out.grad_fn).__name__ == "CheckpointFunctionBackward"
    # The reentrant forward runs the layers under no_grad: one node stands for all of them.
    assert [type(fn).__name__ for fn, _ in out.grad_fn.next_functions if fn is not None] == ["AccumulateGrad"]


# -- bench row 7 -----------------------------------------------------------------------------------

@pytest.mark.parametrize("layers", [4, 9, 16])
def test_row_counts_saved_bytes_from_the_shapes(layers):
    batch, width = 4, 8
    activation = batch * width * 4  # float32
    segments = math.isqrt(layers)  # 2, 3, 4
    cost = row.checkpoint_cost(torch.device("cpu"), layers, width, batch, repeats=1)
    assert cost.segments == segments and cost.memory == "saved"
    # Plain: x and each layer's tanh output (each one also the next layer's input).
    assert cost.plain_bytes == (layers + 1) * activation
    # √L segments: segments - 1 checkpointed ones keep only their inputs; the last runs plain and keeps
    # its input and its layers' outputs (checkpoint_sequential splits the 2L modules evenly here).
    last_segment_layers = layers - (segments - 1) * (layers // segments)
    assert cost.checkpointed_bytes == (segments - 1 + 1 + last_segment_layers) * activation
    assert cost.plain_seconds > 0 and cost.checkpointed_seconds > 0


def test_row_recomputes_the_checkpointed_segments_only():
    """Backs the row's comment: backward runs the checkpointed segments' forwards again, not the last one's."""
    layers, segments = 4, 2
    model = lesson.tanh_layers(layers, 8)
    calls = []
    for index, module in enumerate(model):
        if isinstance(module, torch.nn.Linear):
            module.register_forward_pre_hook(lambda m, args, index=index: calls.append(index // 2))
    x = torch.randn(4, 8, requires_grad=True)
    row.step(model, x, segments)
    assert sorted(calls) == [0, 0, 1, 1, 2, 3]  # layers 0-1 (first segment) twice, 2-3 (last) once


def test_row_figures_are_ratios_of_those_counts():
    rows = row.checkpoint_rows(torch.device("cpu"), counts=(4,), width=8, batch=4, repeats=1)
    assert [r.key for r in rows] == ["7a", "7b"]
    memory, time = rows[0].cpu, rows[1].cpu
    activation = 4 * 8 * 4
    assert memory.value * MB == 4 * activation and memory.reference * MB == 5 * activation
    assert memory.ratio == pytest.approx(4 / 5) and memory.met is True and memory.unit == "MiB"
    assert time.unit == "ms" and time.value > 0 and time.reference > 0 and time.met is None
    assert rows[0].cuda is None and rows[1].cuda is None

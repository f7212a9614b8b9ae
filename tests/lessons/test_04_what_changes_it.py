"""04 graph what changes it: each change against torch's own graph, walked here through
next_functions and read through its `_saved_*` attributes (never through the lens), node counts
and bytes counted by hand from the shapes, and gradients from their analytic forms.
TRY_PROMISES: what each of the lesson's Try lines does (tests/lab/test_tries.py)."""

from collections import Counter

import pytest
import torch
from torch import nn

from tests.support import Promise, assert_caught, load_lesson

lesson = load_lesson("04_computation_graph_what_changes_it.py")

# The lesson's Try lines, in order: the exit code and the text each adds to the output.
TRY_PROMISES = [
    Promise(exit=1, shows=("FAIL  [(bump.name, bump.before, bump.after) for bump in "
                           "changes.versions] = []", "FAIL  no error")),
    Promise(exit=1, shows=("FAIL  [node.name for node in changes.removed + changes.added] = []",)),
    Promise(exit=1, shows=("FAIL  forwards = 2",
                           "FAIL  (len(changes.saved), saved_bytes(before), saved_bytes(after)) = "
                           "(0, 114688, 114688)")),
]

MUTANTS = [
    ("04_computation_graph_what_changes_it.py", "    y = x**2 + 2 * x.detach()\n",
     "    y = x**2 + 2 * x\n"),
    ("04_computation_graph_what_changes_it.py", "    y = x**2 + 2 * x.detach()\n",
     "    y = x.detach()**2 + 2 * x\n"),
    ("04_computation_graph_what_changes_it.py", "    with torch.no_grad():\n        y = x**2",
     "    with torch.enable_grad():\n        y = x**2"),
    ("04_computation_graph_what_changes_it.py", "    model.eval()\n", "    model.train()\n"),
    ("04_computation_graph_what_changes_it.py", "        x.mul_(2)  # in place",
     "        x.mul(2)  # in place"),
    ("04_computation_graph_what_changes_it.py", "    h[0] = 0.0\n", "    h = h * 1.0\n"),
    ("04_computation_graph_what_changes_it.py", "    h.retain_grad()\n", "    h.detach_()\n"),
    ("04_computation_graph_what_changes_it.py", "rows, use_reentrant=False).sum()",
     "rows, use_reentrant=True).sum()"),
]

# Written by a tester who had not read these tests, from the lesson and graph.py alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # [1] x at 2 instead of 3 in the detach observation: x.grad becomes 4, not 6 (and x's leaf value 2)
    ("04_computation_graph_what_changes_it.py",
     "    x = torch.tensor(3.0, requires_grad=True)\n    before = read_graph(x**2 + 2 * x, names={\"x\": x})\n    y = x**2 + 2 * x.detach()",
     "    x = torch.tensor(2.0, requires_grad=True)\n    before = read_graph(x**2 + 2 * x, names={\"x\": x})\n    y = x**2 + 2 * x.detach()"),
    # [2] detach forgotten: nothing removed, Add keeps two edges, x.grad is 8 not 6
    ("04_computation_graph_what_changes_it.py",
     "    y = x**2 + 2 * x.detach()", "    y = x**2 + 2 * x"),
    # [3] enable_grad in place of no_grad in [2]: y keeps its graph, diff removes 0 nodes, not 4
    ("04_computation_graph_what_changes_it.py",
     "    with torch.no_grad():\n        y = x**2 + 2 * x",
     "    with torch.enable_grad():\n        y = x**2 + 2 * x"),
    # [4] no_grad in place of inference_mode: y.is_inference() False, x * y raises no error
    ("04_computation_graph_what_changes_it.py",
     "    with torch.inference_mode():", "    with torch.no_grad():"),
    # [5] model 3 -> 8 -> 1 instead of 3 -> 4 -> 1: eval frees 256 + 64 bytes, not 128 + 32
    ("04_computation_graph_what_changes_it.py",
     "nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5),\n                              nn.Linear(4, 1))",
     "nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Dropout(0.5),\n                              nn.Linear(8, 1))"),
    # [6] model.train() in place of model.eval(): the diff is empty, dropout's Mul not removed, bytes drop 0
    ("04_computation_graph_what_changes_it.py",
     "    model.eval()\n", "    model.train()\n"),
    # [7] seed 1 instead of 0 in [3]: other weights, rows and dropout mask, so the model's output
    #     (the readings' output value) differs; the lesson's own checks (structure, bytes) agree
    ("04_computation_graph_what_changes_it.py",
     "        torch.manual_seed(0)  # the same weights and rows on every run",
     "        torch.manual_seed(1)  # the same weights and rows on every run"),
    # [8] y = (x * 2).sum() instead of (x**2).sum(): Mul by a number saves no x, so the in-place
    #      write modifies no saved tensor and backward() succeeds (x.grad = 2, no error)
    ("04_computation_graph_what_changes_it.py",
     "    y = (x**2).sum()\n", "    y = (x * 2).sum()\n"),
    # [9] two in-place writes (x.mul_(2).mul_(2)): x's version goes 0 -> 2, not 0 -> 1, x is [4, 8, 12]
    ("04_computation_graph_what_changes_it.py",
     "        x.mul_(2)  # in place", "        x.mul_(2).mul_(2)  # in place"),
    # [10] h[1] = 0.0 instead of h[0]: x.grad is [2, 0, 2], not [0, 2, 2]; h's value [2, 0, 6]
    ("04_computation_graph_what_changes_it.py",
     "    h[0] = 0.0", "    h[1] = 0.0"),
    # [11] retain_grad() dropped in [6]: h.grad stays None instead of [4, 8, 12]
    ("04_computation_graph_what_changes_it.py",
     "    h.retain_grad()\n", "    h.detach()\n"),
    # [12] rows requiring grad in [7]: the first mm keeps W0 too and rows gets an AccumulateGrad:
    #      14 nodes, 12 saved tensors, 131072 bytes, not 13 / 11 / 114688
    ("04_computation_graph_what_changes_it.py",
     "    rows = torch.randn(32, 64)", "    rows = torch.randn(32, 64, requires_grad=True)"),
    # [13] relu in place of tanh in [7]: nodes are ReluBackward0, not TanhBackward0, and W.grad differs
    #      from the tanh block's (the lesson only compares plain vs checkpointed, both relu: it agrees)
    ("04_computation_graph_what_changes_it.py",
     "            h = torch.tanh(h @ weight)", "            h = torch.relu(h @ weight)"),
    # [14] saved_bytes counts elements, not bytes (numel without element_size): the eval drop is
    #      40, not 160, and [7]'s plain reading holds 28672, not 114688
    ("04_computation_graph_what_changes_it.py",
     "    return sum(saved.tensor.nbytes for node in graph.nodes",
     "    return sum(torch.Size(saved.tensor.shape).numel() for node in graph.nodes"),
]

FLOAT32 = 4  # bytes per element, by hand


def walk(output):
    """torch's own graph behind output: its nodes, depth first, each once (by identity)."""
    nodes, stack = [], [output.grad_fn] if output.grad_fn is not None else []
    while stack:
        node = stack.pop()
        if any(node is known for known in nodes):
            continue
        nodes.append(node)
        stack.extend(f for f, _ in reversed(node.next_functions) if f is not None)
    return nodes


def saved_tensors(node):
    """The tensors a node holds in its `_saved_*` attributes, read directly."""
    found = []
    for attribute in dir(node):
        if attribute.startswith("_saved_"):
            value = getattr(node, attribute)
            if isinstance(value, torch.Tensor):
                found.append(value)
    return found


def test_detach_cuts_a_branch(lab):
    seen = lab.run(lesson.detach_cuts_a_branch)
    x, y = seen.names["x"], seen.names["y"]
    # By hand: x**2 + 2x is Add(Pow(x), Mul(x, 2)); with x.detach() the Mul is never recorded.
    assert [n.name() for n in walk(y)] == ["AddBackward0", "PowBackward0",
                                           "torch::autograd::AccumulateGrad"]
    assert y.grad_fn.next_functions[1][0] is None
    assert seen["[node.name for node in changes.removed]"] == ["MulBackward0"]
    assert seen["after.nodes[0].inputs"] == ("n1", None)
    assert seen.names["changes"].added == ()
    assert x.grad.item() == 2 * 3.0  # d/dx x² at 3; 2 * x.detach() contributes nothing
    assert seen.expected["x.grad"].value == 6.0


def test_nothing_recorded(lab):
    seen = lab.run(lesson.nothing_recorded)
    x = seen.names["x"]
    recorded = x**2 + 2 * x  # Add, Pow, Mul, and x's AccumulateGrad
    assert len(walk(recorded)) == 4
    assert seen["(len(changes.removed), len(changes.added))"] == (4, 0)
    y = seen.names["y"]  # the last y, made under inference_mode
    assert y.grad_fn is None and not y.requires_grad and y.is_inference()
    assert y.item() == 3.0**2 + 2 * 3.0
    assert seen["(len(read_graph(y).nodes), y.requires_grad, y.is_inference())"] == (0, False, True)
    assert_caught(seen["error"], RuntimeError, "Inference tensors cannot be saved for backward")


def eval_model(train: bool):
    """The lesson's model and rows, rebuilt here from torch's seed 0, in train or eval mode."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 1))
    rows = torch.randn(8, 3)
    model.train(train)
    return model, model(rows).mean()


def test_eval_still_records(lab):
    seen = lab.run(lesson.eval_still_records)
    _, trained = eval_model(train=True)
    model, evaluated = eval_model(train=False)
    trained_names = Counter(n.name() for n in walk(trained))
    evaluated_names = Counter(n.name() for n in walk(evaluated))
    # Dropout's mask multiply is the one node eval mode does not record.
    assert trained_names - evaluated_names == Counter({"MulBackward0": 1})
    assert evaluated_names - trained_names == Counter()
    assert seen["[node.name for node in changes.removed + changes.added]"] == ["MulBackward0"]
    names = {name for name, _ in model.named_parameters()}
    assert seen["leaves"] == sorted(names) and len(names) == 6
    assert evaluated.requires_grad and evaluated.grad_fn is not None
    # Bytes held, read from torch's attributes: the 8 × 4 mask, and batch norm's 4 means and
    # 4 inverse standard deviations of the batch (empty in eval mode).
    held = [sum(t.numel() * t.element_size() for n in walk(o) for t in saved_tensors(n))
            for o in (trained, evaluated)]
    assert held[0] - held[1] == 8 * 4 * FLOAT32 + 2 * 4 * FLOAT32
    assert seen["saved_bytes(before) - saved_bytes(after)"] == 160
    norm = next(n for n in walk(evaluated) if n.name() == "NativeBatchNormBackward0")
    assert norm._saved_result1.numel() == 0 and norm._saved_result2.numel() == 0
    assert all(p.device.type == "cpu" for p in seen.names["model"].parameters())
    # The lesson's model and rows are torch's seed 0 draws, as rebuilt here (same ops, same order).
    for (name, mine), (_, theirs) in zip(seen.names["model"].named_parameters(),
                                         model.named_parameters()):
        assert torch.equal(mine.detach(), theirs.detach()), name
    torch.manual_seed(0)
    nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 1))
    assert torch.equal(seen.names["rows"], torch.randn(8, 3))


def test_in_place_bumps_the_version(lab):
    seen = lab.run(lesson.in_place_bumps_the_version)
    x, y = seen.names["x"], seen.names["y"]
    assert x._version == 1 and x.tolist() == [2.0, 4.0, 6.0]
    power = y.grad_fn.next_functions[0][0]
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        power._saved_self  # noqa: B018
    label = "[(change.name, change.slot, change.after) for change in changes.saved]"
    assert seen[label] == [("PowBackward0", "self", "modified in place")]
    assert seen["[(bump.name, bump.before, bump.after) for bump in changes.versions]"] == [
        ("x", 0, 1)]
    assert_caught(seen["error"], RuntimeError, "is at version 1; expected version 0")


def test_slice_write_adds_copyslices(lab):
    seen = lab.run(lesson.slice_write_adds_copyslices)
    x, h = seen.names["x"], seen.names["h"]
    assert [n.name() for n in walk(h)] == ["torch::autograd::CopySlices", "MulBackward0",
                                           "torch::autograd::AccumulateGrad"]
    assert h.grad_fn.next_functions[0][0].name() == "MulBackward0"
    assert seen["([node.name for node in changes.added], changes.removed)"] == (["CopySlices"], ())
    assert h._version == 1 and seen["h._version"] == 1
    # d(sum(h))/dx with h = [0, 2x₁, 2x₂]: 0 for the overwritten element, 2 for the others.
    assert x.grad.tolist() == [0.0, 2.0, 2.0]
    assert seen.expected["x.grad"].value == [0.0, 2.0, 2.0]


def test_retain_grad_changes_nothing(lab):
    seen = lab.run(lesson.retain_grad_changes_nothing)
    x, h = seen.names["x"], seen.names["h"]
    assert h.retains_grad and not h.is_leaf
    assert seen["changes.empty"] is True and seen.names["changes"].text().startswith("no change")
    assert h.grad.tolist() == [2 * 2 * v for v in (1.0, 2.0, 3.0)]  # dy/dh = 2h, h = 2x
    assert x.grad.tolist() == [8 * v for v in (1.0, 2.0, 3.0)]  # dy/dx = 2h · 2 = 8x


def test_checkpoint_packs_saved_tensors(lab):
    seen = lab.run(lesson.checkpoint_packs_saved_tensors)
    rows, n, width = 32, 4, 64
    # By hand: n mm and n tanh, the sum, n AccumulateGrad.
    assert seen["(len(before.nodes), len(changes.removed), len(changes.added))"] == (
        n + n + 1 + n, 0, 0)
    # tanh keeps its result (rows × width); mm keeps its input h (rows × width) and, except the
    # first (rows need no gradient), its weight (width × width).
    held = n * rows * width + n * rows * width + (n - 1) * width * width
    saved_count = n + n + (n - 1)
    assert seen["(len(changes.saved), saved_bytes(before), saved_bytes(after))"] == (
        saved_count, held * FLOAT32, 0)
    assert seen["sorted({(change.before, change.after) for change in changes.saved})"] == [
        ("held", "packed by a hook")]
    # torch's own graph: the same node names as a plain run, every saved slot behind a hook.
    checkpointed = seen.names["checkpointed"]
    assert len(walk(checkpointed)) == n + n + 1 + n
    assert seen["forwards"] == 3
    # The gradients against float64 autograd of the same block.
    weights = [w.detach().double().requires_grad_() for w in seen.names["weights"]]
    h = seen.names["rows"].double()
    for weight in weights:
        h = torch.tanh(h @ weight)
    h.sum().backward()
    for mine, oracle in zip(seen.names["weights"], weights):
        # float32 through 4 layers against float64: a bound relative to the gradient's size
        scale = oracle.grad.abs().max()
        assert (mine.grad.double() - oracle.grad).abs().max() <= 1e-4 * scale


def test_the_checkpointed_blocks_slots_are_8_distinct_tensors(lab):
    """The lesson's "8 distinct tensors": 3 of the 4 mm inputs are the tanh results saved beside
    them, read from torch's own _saved_* attributes of the plain block."""
    seen = lab.run(lesson.checkpoint_packs_saved_tensors)
    h = seen.names["rows"]
    for weight in seen.names["weights"]:
        h = torch.tanh(h @ weight)
    slots = [t for node in walk(h.sum()) for t in saved_tensors(node)]
    storages = {t.untyped_storage().data_ptr() for t in slots}
    assert (len(slots), len(storages)) == (11, 8)
    # What checkpointing frees: the saved tensors that are neither a weight nor rows, the 4 tanh
    # results (32 KiB); the weights and rows are kept alive by the caller anyway.
    kept_anyway = {t.untyped_storage().data_ptr()
                   for t in [*seen.names["weights"], seen.names["rows"]]}
    freed = {t.untyped_storage().data_ptr(): t.numel() * t.element_size() for t in slots
             if t.untyped_storage().data_ptr() not in kept_anyway}
    assert (len(freed), sum(freed.values())) == (4, 4 * 32 * 64 * FLOAT32) == (4, 32 * 1024)

"""04 graph pictured: every graph the lesson's checks saw, against graphs written here by hand from
what each forward op is and what its derivative needs (pow keeps its base, mm keeps the factor the
other input's gradient needs, addmm is one node per nn.Linear), bytes as numel × element_size
counted by hand, and torch's own `_saved_*` attributes and next_functions read directly.
TRY_PROMISES: what each of the lesson's Try lines does (tests/lab/test_tries.py)."""

import pytest
import torch
from torch import nn

from tests.support import Promise, assert_caught, load_lesson

lesson = load_lesson("04_computation_graph_pictured.py")

# The lesson's Try lines, in order: the exit code and the text each adds to the output.
TRY_PROMISES = [
    Promise(exit=1, shows=("for change in changes.saved] = []", "FAIL  no error")),
    Promise(exit=1, shows=("(MmBackward0, mat2, w, 12)",
                           "FAIL  sum(nbytes for *_, nbytes in kept) = 1612")),
    Promise(exit=1, shows=("FAIL  [node.name for node in graph.nodes] = [AddBackward0, "
                           "MulBackward0, AccumulateGrad, MulBackward0]",)),
]

MUTANTS = [
    ("04_computation_graph_pictured.py", "    y = x**2 + 2 * x\n", "    y = x**3 + 2 * x\n"),
    ("04_computation_graph_pictured.py", "    y = x**2 + 2 * x\n", "    y = x**2 + 2.0 * x\n"),
    ("04_computation_graph_pictured.py", 
     "    residual = Phi @ w - y\n    loss = (residual**2).mean()\n    graph",
     "    residual = Phi @ w - y\n    loss = (residual**2).sum()\n    graph"),
    ("04_computation_graph_pictured.py", 
     "    residual = Phi @ w - y\n    loss = (residual**2).mean()\n    graph",
     "    residual = Phi @ w - y\n    loss = residual.abs().mean()\n    graph"),
    ("04_computation_graph_pictured.py", "    return feature_map(x), y, w",
     "    return feature_map(x, degree=2), y, w"),
    ("04_computation_graph_pictured.py", 
     "nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1))\n    x =",
     "nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1, bias=False))\n    x ="),
    ("04_computation_graph_pictured.py", "    x = torch.linspace(-1, 1, 5).unsqueeze(1)\n    out",
     "    x = torch.linspace(-1, 1, 5).unsqueeze(1).requires_grad_()\n    out"),
    ("04_computation_graph_pictured.py", "    loss.backward()\n    after = lab.graph",
     "    loss.backward(retain_graph=True)\n    after = lab.graph"),
]

# Written by a tester who had not read these tests, from the lesson alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # [1] evaluated at x = 2 instead of 3: the output value is 8, x's leaf value 2, not 15 and 3
    ("04_computation_graph_pictured.py",
     "    x = torch.tensor(3.0, requires_grad=True)\n    y = x**2 + 2 * x",
     "    x = torch.tensor(2.0, requires_grad=True)\n    y = x**2 + 2 * x"),
    # [1] 3x instead of 2x: mul keeps other = 3, output 18 instead of 15
    ("04_computation_graph_pictured.py",
     "    y = x**2 + 2 * x\n",
     "    y = x**2 + 3 * x\n"),
    # [1] pow and mul nodes taken in the wrong order: the saved-slot/inputs/saved-value checks read the wrong node
    ("04_computation_graph_pictured.py",
     "    power, product = graph.nodes[1], graph.nodes[3]",
     "    power, product = graph.nodes[3], graph.nodes[1]"),
    # [2]/[4] the trainer's data has 50 points, not 100: residual 200 bytes, Φ 600 bytes, total 800, loss changes
    ("04_computation_graph_pictured.py",
     "    x, y = load_data(n=100, noise=0.1, seed=0, device=lab.device)",
     "    x, y = load_data(n=50, noise=0.1, seed=0, device=lab.device)"),
    # [2]/[4] noise 0.01 instead of 0.1: the loss value and w's gradient change
    ("04_computation_graph_pictured.py",
     "    x, y = load_data(n=100, noise=0.1, seed=0, device=lab.device)",
     "    x, y = load_data(n=100, noise=0.01, seed=0, device=lab.device)"),
    # [2]/[4] initial weights drawn with seed 1: w's values, the loss and w's gradient change
    ("04_computation_graph_pictured.py",
     "    w = initial_weights(3, seed=0, device=lab.device)",
     "    w = initial_weights(3, seed=1, device=lab.device)"),
    # [2]/[4] everything in float64: saved bytes double (800 + 2400 = 3200 instead of 1600)
    ("04_computation_graph_pictured.py",
     "    return feature_map(x), y, w",
     "    return feature_map(x).double(), y.double(), w.double()"),
    # [2] sum instead of mean: SumBackward0 at the root, loss 100x larger
    ("04_computation_graph_pictured.py",
     "    loss = (residual**2).mean()\n    graph = lab.graph(loss",
     "    loss = (residual**2).sum()\n    graph = lab.graph(loss"),
    # [4] residual with +y instead of -y: AddBackward0 instead of SubBackward0, loss and w.grad change
    ("04_computation_graph_pictured.py",
     "    residual = Phi @ w - y\n    loss = (residual**2).mean()\n    names",
     "    residual = Phi @ w + y\n    loss = (residual**2).mean()\n    names"),
    # [4] graph read only after backward: diff finds no held->freed change (empty change list)
    ("04_computation_graph_pictured.py",
     "    before = read_graph(loss, names=names)\n    loss.backward()\n",
     "    loss.backward()\n    before = read_graph(loss, names=names)\n"),
    # [3] a different seed: every parameter's initial value changes
    ("04_computation_graph_pictured.py",
     "    torch.manual_seed(0)  # the same initial weights on every run",
     "    torch.manual_seed(1)  # the same initial weights on every run"),
    # [3] ReLU instead of Tanh: the middle node is ReluBackward0, not TanhBackward0
    ("04_computation_graph_pictured.py",
     "    model = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1))",
     "    model = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1))"),
    # [3] hidden width 8 instead of 4: parameter shapes and saved tensors' shapes/bytes change
    ("04_computation_graph_pictured.py",
     "    model = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1))",
     "    model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))"),
    # [3] second layer without bias: 3 leaves (no 2.bias), its addmm becomes mm
    ("04_computation_graph_pictured.py",
     "    model = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1))",
     "    model = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1, bias=False))"),
    # [3] 6 points instead of 5: output and saved tensors have 6 rows
    ("04_computation_graph_pictured.py",
     "    x = torch.linspace(-1, 1, 5).unsqueeze(1)",
     "    x = torch.linspace(-1, 1, 6).unsqueeze(1)"),
    # [3] the input asks for a gradient: x becomes a fifth AccumulateGrad leaf
    ("04_computation_graph_pictured.py",
     "    x = torch.linspace(-1, 1, 5).unsqueeze(1)",
     "    x = torch.linspace(-1, 1, 5).unsqueeze(1).requires_grad_()"),
]

FLOAT32 = 4  # bytes per element, by hand


def saved_slots(node):
    """torch's own `_saved_<slot>` tensors of a node, read directly (None skipped)."""
    found = {}
    for attribute in dir(node):
        if attribute.startswith("_saved_"):
            value = getattr(node, attribute)
            if isinstance(value, torch.Tensor):
                found[attribute.removeprefix("_saved_")] = value
    return found


def test_original_graph(lab):
    seen = lab.run(lesson.original_graph)
    # y = x**2 + 2*x, depth first: Add, its first input Pow, Pow's input x, then Mul (x again).
    assert seen["[node.name for node in graph.nodes]"] == [
        "AddBackward0", "PowBackward0", "AccumulateGrad", "MulBackward0"]
    assert seen["[(saved.slot, saved.tensor.name) for saved in power.saved]"] == [("self", "x")]
    assert seen["product.inputs"] == ("n2", None)
    label = "[(saved.slot, saved.tensor.values) for saved in product.saved]"
    assert seen[label] == [("other", (2,))]
    # torch's own node, read directly: pow keeps x itself (the same object), with exponent 2.
    x, y = seen.names["x"], seen.names["y"]
    power, product = (f for f, _ in y.grad_fn.next_functions)
    assert power._saved_self is x and power._saved_exponent == 2
    # The Python int 2 is wrapped as an int64 number: 2.0 would be a float one.
    assert product._saved_other.dtype == torch.int64
    assert product._saved_other.item() == 2 and product.next_functions[1][0] is None
    assert power.next_functions[0][0] is product.next_functions[0][0]  # one AccumulateGrad for x
    assert y.item() == 3.0**2 + 2 * 3.0


def test_trainer_loss_graph(lab):
    seen = lab.run(lesson.trainer_loss_graph)
    assert seen["[node.name for node in graph.nodes]"] == [
        "MeanBackward0", "PowBackward0", "SubBackward0", "MmBackward0", "AccumulateGrad"]
    n = 100
    residual_bytes, phi_bytes = n * 1 * FLOAT32, n * 3 * FLOAT32
    assert seen["kept"] == [("PowBackward0", "self", "residual", residual_bytes),
                            ("MmBackward0", "self", "Phi", phi_bytes)]
    assert seen["sum(nbytes for *_, nbytes in kept)"] == residual_bytes + phi_bytes == 1600
    # torch's own attributes: mm keeps Φ and no w (Φ needs no gradient), pow keeps the residual.
    names = seen.names
    loss, Phi, w, residual = names["loss"], names["Phi"], names["w"], names["residual"]
    mean = loss.grad_fn
    pow_node = mean.next_functions[0][0]
    sub = pow_node.next_functions[0][0]
    mm = sub.next_functions[0][0]
    assert saved_slots(mean) == {} and saved_slots(sub) == {}
    assert set(saved_slots(pow_node)) == {"self"} and set(saved_slots(mm)) == {"self"}
    assert pow_node._saved_self is residual
    assert mm._saved_self is Phi and mm._saved_mat2 is None
    assert mm.next_functions[1][0].variable is w and sub.next_functions[1][0] is None
    assert Phi.shape == (n, 3) and Phi.dtype == torch.float32 and w.shape == (3, 1)
    # Φ is [x, x², x³] of the trainer's 100 points on [-1, 1], built here from linspace.
    grid = torch.linspace(-1, 1, n, dtype=torch.float64, device=Phi.device)
    expected_phi = torch.stack([grid, grid**2, grid**3], dim=1)
    assert torch.allclose(Phi.double(), expected_phi, atol=1e-6)
    assert loss.item() == pytest.approx(((Phi.double() @ w.double() - names["y"].double()) ** 2)
                                        .mean().item(), rel=1e-5)


def test_mlp_graph(lab):
    seen = lab.run(lesson.mlp_graph)
    assert seen["sorted(leaves)"] == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert seen["sorted(node.name for node in graph.nodes if node.leaf is None)"] == [
        "AddmmBackward0", "AddmmBackward0", "TBackward0", "TBackward0", "TanhBackward0"]
    # The leaves reached by walking torch's next_functions are exactly the model's parameters.
    model, out, x = seen.names["model"], seen.names["out"], seen.names["x"]
    stack, nodes, variables = [out.grad_fn], [], []
    while stack:
        node = stack.pop()
        if node is None or any(node is seen_node for seen_node in nodes):
            continue
        nodes.append(node)
        if hasattr(node, "variable"):
            variables.append(node.variable)
        stack.extend(f for f, _ in node.next_functions)
    parameters = list(model.parameters())
    assert len(variables) == len(parameters) == 4  # 2 weights + 2 biases
    assert all(any(v is p for p in parameters) for v in variables)
    assert len(nodes) == 4 + 5  # 4 AccumulateGrad, 2 addmm, 2 transposes, 1 tanh
    assert not x.requires_grad and x.shape == (5, 1)
    assert isinstance(model[1], nn.Tanh)
    assert model[0].in_features == 1 and model[2].out_features == 1


def test_after_backward(lab):
    seen = lab.run(lesson.after_backward)
    label = ("[(change.name, change.slot, change.before, change.after) "
             "for change in changes.saved]")
    assert seen[label] == [("PowBackward0", "self", "held", "freed"),
                           ("MmBackward0", "self", "held", "freed")]
    assert_caught(seen["error"], RuntimeError, "Trying to backward through the graph a second time")
    # torch's own node says the same: reading a freed saved tensor raises.
    mm = seen.names["loss"].grad_fn.next_functions[0][0].next_functions[0][0].next_functions[0][0]
    with pytest.raises(RuntimeError, match="after they have already been freed"):
        mm._saved_self  # noqa: B018
    # w.grad from backward() is the analytic gradient 2/n Φᵀ(Φw − y), in float64 here.
    Phi, y, w = (seen.names[k].double() for k in ("Phi", "y", "w"))
    expected = 2 / Phi.shape[0] * Phi.T @ (Phi @ w.detach() - y)
    assert torch.allclose(seen.names["w"].grad.double(), expected, rtol=1e-4, atol=1e-6)
    # The reading after backward(): both saved tensors freed.
    after = seen.names["after"]
    assert [s.state for node in after.nodes for s in node.saved] == ["freed", "freed"]


def test_trainer_start_is_the_trainers_data(lab):
    Phi, y, w = lesson.trainer_start(lab)
    assert Phi.shape == (100, 3) and y.shape == (100, 1) and w.shape == (3, 1)
    assert not (Phi.requires_grad or y.requires_grad or w.requires_grad)


# -- what the blind mutants found untested (12/16 killed before) -----------------------------------

def test_trainer_start_holds_the_trainers_numbers(lab):
    """The trainer's data and first w are load_data's and initial_weights' defaults (seed 0, noise
    0.1): the lesson's 400 and 1200 bytes are of those very tensors."""
    from tensor_features.load_data import load_data
    from tensor_features.trainer.model import initial_weights

    Phi, y, w = lesson.trainer_start(lab)
    x_ref, y_ref = load_data(n=100, noise=0.1, seed=0)
    assert torch.equal(y.cpu(), y_ref) and torch.equal(w.cpu(), initial_weights(3, seed=0, device="cpu"))
    assert torch.equal(Phi.cpu(), torch.cat([x_ref, x_ref**2, x_ref**3], dim=1))


def test_the_mlp_is_1_4_1_with_torch_seed_0(lab):
    seen = lab.run(lesson.mlp_graph)
    shapes = {name: tuple(p.shape) for name, p in seen.names["model"].named_parameters()}
    assert shapes == {"0.weight": (4, 1), "0.bias": (4,), "2.weight": (1, 4), "2.bias": (1,)}
    if lab.device.type != "cpu":
        return  # on a GPU the default generator there draws other numbers from the same seed
    torch.manual_seed(0)  # the lesson's "same initial weights on every run": torch's seed 0
    fresh = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1))
    for (name, mine), (_, theirs) in zip(seen.names["model"].named_parameters(), fresh.named_parameters()):
        assert torch.equal(mine.detach().cpu(), theirs.detach()), name

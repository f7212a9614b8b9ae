"""02 tensor engine: every value the lesson's checks saw (and the locals its observations left),
against an oracle written here: the original data and the MLP's weights drawn again here, and
torch.autograd (backward, grad with grad_outputs, torch.func.vjp and jacrev) on them; the
broadcast sum by hand; what torch's graph nodes keep, read from tiny graphs built here. The
engine itself is tested op by op against torch.autograd on random float64 shapes (broadcasting
cases included), against float64 central differences, and for the two rules of backward():
shares of a node used twice add up, and nodes are visited in reverse topological order. The
tolerance the lesson states is backed by the sums of magnitudes measured here. TRY_PROMISES: what
each of the lesson's Try lines does (tests/lab/test_tries.py)."""

import math
import re

import pytest
import torch

from tests.support import Promise, load_lesson
from tensor_features.load_data import load_data

lesson = load_lesson("02_autograd_from_scratch_tensor_engine.py")
Node, sum_to = lesson.Node, lesson.sum_to
F64 = torch.float64
EPS = torch.finfo(F64).eps

# The lesson's Try lines, in order: the exit code and the text each adds to the output.
TRY_PROMISES = [
    Promise(shows=("device cuda",)),
    Promise(exit=1, shows=("FAIL  b1.grad = <100×8 float64>", "FAIL  b2.grad = <100×1 float64>",
                           "FAIL  tuple(b.grad.shape) = (100, 8)", "FAIL  b.grad = <100×8 float64>",
                           "ok  W1.grad = ", "ok  W2.grad = ")),
    Promise(shows=("ok  tuple(b.grad.shape) = (1, 8)", "ok  b.grad = [[")),
    Promise(exit=1, shows=("FAIL  torch_keeps = [[], [self], [], [], [mat2, self], [result], [], [mat2, self]]",
                           "FAIL  (first_mm._saved_self is x_data, first_mm._saved_mat2) = (False, ")),
]

MUTANTS = [
    # tanh's local derivative without the square
    ("02_autograd_from_scratch_tensor_engine.py", 'lambda g, s: (g * (1 - s["result"] ** 2),))', 'lambda g, s: (g * (1 - s["result"]),))'),
    # mean's backward forgets the 1/n
    ("02_autograd_from_scratch_tensor_engine.py", 'g.expand(s["shape"]) / math.prod(s["shape"]),))', 'g.expand(s["shape"]),))'),
    # sub's second share loses its minus sign
    ("02_autograd_from_scratch_tensor_engine.py", '-sum_to(g, s["shapes"][1])))', 'sum_to(g, s["shapes"][1])))'),
    # the scalar engine's classic: = instead of +=, a node used twice keeps one share
    ("02_autograd_from_scratch_tensor_engine.py", "parent.grad = parent.grad + share", "parent.grad = share"),
    # the intermediate nodes keep their .grad from the last backward (micrograd #53): a second one double-counts
    ("02_autograd_from_scratch_tensor_engine.py", "                node.grad = torch.zeros_like(node.data)", "                pass"),
    # a stretched dimension summed without keepdim
    ("02_autograd_from_scratch_tensor_engine.py", "grad = grad.sum(dim=dim, keepdim=True)", "grad = grad.sum(dim=dim)"),
    # the lesson's own torch.autograd side with a summed loss: its expectations 100 times too large
    ("02_autograd_from_scratch_tensor_engine.py", "b2_t - y_data) ** 2).mean()\n    loss_t.backward()",
     "b2_t - y_data) ** 2).sum()\n    loss_t.backward()"),
    # other weights than the seeded ones the lesson promises
    ("02_autograd_from_scratch_tensor_engine.py", "    generator = torch.Generator().manual_seed(seed)\n    # A CPU generator",
     "    generator = torch.Generator().manual_seed(seed + 1)\n    # A CPU generator"),
]

# Written by a tester who had not read these tests, from the lesson alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # sum_to averages instead of sums over the added batch dimension: b1.grad, b2.grad and [2]'s b.grad shrink 100x
    ("02_autograd_from_scratch_tensor_engine.py",
     "        grad = grad.sum(dim=0)  # a dimension added in front: (100, 8) -> (8,)",
     "        grad = grad.mean(dim=0)  # a dimension added in front: (100, 8) -> (8,)"),
    # matmul's d/dB averaged over the batch (Aᵀ G / n): W1.grad, W2.grad and [3]'s engine_mm[1] change
    ("02_autograd_from_scratch_tensor_engine.py",
     "lambda g, s: (g @ s[\"mat2\"].T, s[\"self\"].T @ g))",
     "lambda g, s: (g @ s[\"mat2\"].T, s[\"self\"].T @ g / g.shape[0]))"),
    # add's second share summed back to the first operand's shape: b1.grad/b2.grad/[2]'s b.grad take the batch's shape
    ("02_autograd_from_scratch_tensor_engine.py",
     "lambda g, s: (sum_to(g, s[\"shapes\"][0]), sum_to(g, s[\"shapes\"][1])))",
     "lambda g, s: (sum_to(g, s[\"shapes\"][0]), sum_to(g, s[\"shapes\"][0])))"),
    # sub negates the first operand's share instead of the second's: every weight gradient in [1] flips sign
    ("02_autograd_from_scratch_tensor_engine.py",
     "lambda g, s: (sum_to(g, s[\"shapes\"][0]), -sum_to(g, s[\"shapes\"][1])))",
     "lambda g, s: (-sum_to(g, s[\"shapes\"][0]), sum_to(g, s[\"shapes\"][1])))"),
    # pow's backward uses k a^k instead of k a^(k-1): all four gradients in [1] change
    ("02_autograd_from_scratch_tensor_engine.py",
     "(g * s[\"exponent\"] * s[\"self\"] ** (s[\"exponent\"] - 1),))",
     "(g * s[\"exponent\"] * s[\"self\"] ** s[\"exponent\"],))"),
    # pow's backward drops the factor k: all four gradients in [1] are halved
    ("02_autograd_from_scratch_tensor_engine.py",
     "(g * s[\"exponent\"] * s[\"self\"] ** (s[\"exponent\"] - 1),))",
     "(g * s[\"self\"] ** (s[\"exponent\"] - 1),))"),
    # tanh's backward written (1 - tanh)^2 instead of 1 - tanh^2: [1] W1/b1 grads, [2] b.grad, [3] engine_tanh change
    ("02_autograd_from_scratch_tensor_engine.py",
     "lambda g, s: (g * (1 - s[\"result\"] ** 2),))",
     "lambda g, s: (g * (1 - s[\"result\"]) ** 2,))"),
    # tanh keeps its input instead of its output: 1 - a^2 used as derivative; grads change and [4]'s h.saved is h.data becomes False
    ("02_autograd_from_scratch_tensor_engine.py",
     "return Node(result, (self,), \"tanh\", {\"result\": result},",
     "return Node(result, (self,), \"tanh\", {\"result\": self.data},"),
    # sum's backward divides by n like mean's: [2]'s b.grad becomes 800x smaller
    ("02_autograd_from_scratch_tensor_engine.py",
     "lambda g, s: (g.expand(s[\"shape\"]),))",
     "lambda g, s: (g.expand(s[\"shape\"]) / math.prod(s[\"shape\"]),))"),
    # mean's backward divides by the number of dimensions (2) instead of the number of elements (100): [1] grads 50x larger
    ("02_autograd_from_scratch_tensor_engine.py",
     "lambda g, s: (g.expand(s[\"shape\"]) / math.prod(s[\"shape\"]),))",
     "lambda g, s: (g.expand(s[\"shape\"]) / len(s[\"shape\"]),))"),
    # topological order appends a node before its parents (pre-order): printed visit order changes and gradients come out wrong
    ("02_autograd_from_scratch_tensor_engine.py",
     "                visited.add(node)\n                for parent in node.parents:\n                    visit(parent)\n                order.append(node)  # only once all of its parents are in the list",
     "                visited.add(node)\n                order.append(node)  # only once all of its parents are in the list\n                for parent in node.parents:\n                    visit(parent)"),
    # backward walks the topological order forwards (reversed dropped): leaves are visited first and all weight grads stay zero
    ("02_autograd_from_scratch_tensor_engine.py",
     "        for node in reversed(order):",
     "        for node in order:"),
    # backward seeds the loss's gradient with zeros instead of ones: every gradient is zero
    ("02_autograd_from_scratch_tensor_engine.py",
     "        self.grad = self.grad + torch.ones_like(self.data)  # d self / d self = 1",
     "        self.grad = self.grad + torch.zeros_like(self.data)  # d self / d self = 1"),
    # a new node's .grad starts at ones instead of zeros: every leaf gradient is off by +1
    ("02_autograd_from_scratch_tensor_engine.py",
     "        self.grad = torch.zeros_like(data)  # d loss / d data, filled in by backward()",
     "        self.grad = torch.ones_like(data)  # d loss / d data, filled in by backward()"),
    # mlp_weights' default seed 1 instead of 0: the loss and all gradients in [1] change
    ("02_autograd_from_scratch_tensor_engine.py",
     "def mlp_weights(hidden: int = 8, seed: int = 0) -> list[torch.Tensor]:",
     "def mlp_weights(hidden: int = 8, seed: int = 1) -> list[torch.Tensor]:"),
    # [1] loads the data with noise 0.01 instead of 0.1: the loss and gradients change
    ("02_autograd_from_scratch_tensor_engine.py",
     "    x_data, y_data = load_data(n=100, noise=0.1, seed=0, device=lab.device)\n    x_data, y_data = x_data.double(), y_data.double()  # the trainer's numbers, in float64\n    weights = mlp_weights(hidden=8)\n    x, y = Node(x_data, name=\"x\")",
     "    x_data, y_data = load_data(n=100, noise=0.01, seed=0, device=lab.device)\n    x_data, y_data = x_data.double(), y_data.double()  # the trainer's numbers, in float64\n    weights = mlp_weights(hidden=8)\n    x, y = Node(x_data, name=\"x\")"),
    # [2] seeds its generator with 0 instead of 1: the batch, the bias and b.grad change
    ("02_autograd_from_scratch_tensor_engine.py",
     "    generator = torch.Generator().manual_seed(1)",
     "    generator = torch.Generator().manual_seed(0)"),
    # [2]'s own oracle forgets the bias in the upstream gradient: the expected column sums change (a wrong claim)
    ("02_autograd_from_scratch_tensor_engine.py",
     "    upstream = 1 - torch.tanh(A.data + b.data) ** 2",
     "    upstream = 1 - torch.tanh(A.data) ** 2"),
    # [3] runs tanh's local backward on the input instead of what the node saved: engine_tanh uses 1 - a^2
    ("02_autograd_from_scratch_tensor_engine.py",
     "    (engine_tanh,) = t.local_backward(v, t.saved)",
     "    (engine_tanh,) = t.local_backward(v, {\"result\": a_data})"),
    # [4] engine_keeps lists every saved entry, not only tensors: shapes/exponent/shape appear in the list
    ("02_autograd_from_scratch_tensor_engine.py",
     "    engine_keeps = [sorted(k for k, v in node.saved.items() if isinstance(v, torch.Tensor))",
     "    engine_keeps = [sorted(k for k, v in node.saved.items())"),
    # [4] saved_tensor_names keeps every _saved_ attribute, not only tensors: torch_keeps gains sizes, exponents, None mat2
    ("02_autograd_from_scratch_tensor_engine.py",
     "    return sorted(name.removeprefix(\"_saved_\") for name in names\n                  if isinstance(getattr(grad_fn, name), torch.Tensor))",
     "    return sorted(name.removeprefix(\"_saved_\") for name in names)"),
    # [4] takes the wrong Mm node (h @ W2, index 4): _saved_self is not x_data and _saved_mat2 is W2, not None
    ("02_autograd_from_scratch_tensor_engine.py",
     "    first_mm = torch_nodes[-1]",
     "    first_mm = torch_nodes[4]"),
]


# -- oracles written here --------------------------------------------------------------------------

def original_data():
    """The original regression's data (the trainer's float32 numbers), in float64 on the CPU."""
    x, y = load_data(n=100, noise=0.1, seed=0)
    return x.to(F64), y.to(F64)


def seeded_weights(hidden: int = 8, seed: int = 0) -> list[torch.Tensor]:
    """W1 (1, h), b1 (h,), W2 (h, 1), b2 (1,): randn from one CPU generator, in that order."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=F64)
            for shape in [(1, hidden), (hidden,), (hidden, 1), (1,)]]


def mlp_by_autograd(x, y, weights):
    """The loss tanh(x W1 + b1) W2 + b2 vs y, mean squared, and its four gradients by torch.autograd."""
    leaves = [w.clone().requires_grad_() for w in weights]
    W1, b1, W2, b2 = leaves
    loss = ((torch.tanh(x @ W1 + b1) @ W2 + b2 - y) ** 2).mean()
    return loss.detach(), torch.autograd.grad(loss, leaves)


def cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu()


def random(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# -- [1] the MLP --------------------------------------------------------------------------------------

def test_the_mlp_gradients_are_torch_autograds(lab):
    seen = lab.run(lesson.mlp_against_autograd)
    x, y = original_data()
    weights = seeded_weights()
    for name, drawn, node in zip(("W1", "b1", "W2", "b2"), weights, (seen.names[n] for n in ("W1", "b1", "W2", "b2"))):
        assert torch.equal(cpu(node.data), drawn), name  # the seeded draw, moved but not changed
    assert torch.equal(cpu(seen.names["x_data"]), x) and torch.equal(cpu(seen.names["y_data"]), y)
    loss, grads = mlp_by_autograd(x, y, weights)
    assert seen["loss.data"].item() == pytest.approx(loss.item(), rel=1e-12)
    for name, grad in zip(("W1", "b1", "W2", "b2"), grads):
        got = cpu(seen[f"{name}.grad"])
        assert got.shape == grad.shape, name
        assert torch.allclose(got, grad, rtol=0, atol=1e-10 * grad.abs().max().item()), name
    assert 0.1 < loss.item() < 10  # a real loss, not a degenerate one: tanh is not saturated to zero
    # The lesson's own torch.autograd side, which its checks expect.
    assert seen.names["loss_t"].item() == pytest.approx(loss.item(), rel=1e-12)
    for leaf, grad in zip(seen.names["leaves"], grads):
        assert torch.allclose(cpu(leaf.grad), grad, rtol=0, atol=1e-10 * grad.abs().max().item())


def test_the_engine_computes_x_s_gradient_too(lab):
    """[4]'s comment: the engine computes every gradient, x's included (torch computes it only when
    x asks for one)."""
    seen = lab.run(lesson.mlp_against_autograd)
    x, y = original_data()
    W1, b1, W2, b2 = seeded_weights()
    x_t, y_t = x.clone().requires_grad_(), y.clone().requires_grad_()
    gx, gy = torch.autograd.grad(((torch.tanh(x_t @ W1 + b1) @ W2 + b2 - y_t) ** 2).mean(), (x_t, y_t))
    assert torch.allclose(cpu(seen.names["x"].grad), gx, rtol=0, atol=1e-10 * gx.abs().max().item())
    assert torch.allclose(cpu(seen.names["y"].grad), gy, rtol=0, atol=1e-10 * gy.abs().max().item())


def test_the_mlp_gradients_match_central_differences(lab):
    """An oracle independent of any autograd: float64 central differences of the loss."""
    seen = lab.run(lesson.mlp_against_autograd)
    x, y = original_data()
    weights = seeded_weights()

    def loss_at(ws):
        W1, b1, W2, b2 = ws
        return ((torch.tanh(x @ W1 + b1) @ W2 + b2 - y) ** 2).mean().item()

    h = 1e-6  # central differences in float64: truncation ~h², rounding ~eps/h, both << 1e-6
    for index, name in enumerate(("W1", "b1", "W2", "b2")):
        got = cpu(seen[f"{name}.grad"]).reshape(-1)
        for k in range(weights[index].numel()):
            plus = [w.clone() for w in weights]
            minus = [w.clone() for w in weights]
            plus[index].view(-1)[k] += h
            minus[index].view(-1)[k] -= h
            assert got[k].item() == pytest.approx((loss_at(plus) - loss_at(minus)) / (2 * h), abs=1e-7), (name, k)


def test_the_order_and_the_plain_tensors(lab):
    seen = lab.run(lesson.mlp_against_autograd)
    # loss = mean(pow(sub(add(matmul(tanh(add(matmul(x, W1), b1)), W2), b2), y))), depth first from
    # the loss, parents left to right, reversed: the loss first, x last.
    assert seen["the order backward() visits"] == ["mean", "pow", "sub", "y", "add", "b2", "matmul", "W2",
                                                   "tanh", "add", "b1", "matmul", "W1", "x"]
    order = seen.names["order"]
    assert len(order) == 14 and order[-1] is seen.names["loss"]
    position = {id(node): i for i, node in enumerate(order)}
    assert all(position[id(p)] < position[id(node)] for node in order for p in node.parents)
    assert seen["topological"] is True
    tensors = [t for node in order for t in (node.data, node.grad)]
    assert not any(t.requires_grad or t.grad_fn is not None for t in tensors)
    assert seen["any requires_grad or grad_fn"] is False
    assert all(node.grad.shape == node.data.shape for node in order)
    assert all(node.data.dtype == F64 for node in order)


def test_the_stated_tolerance_covers_float64_rounding_here():
    """The lesson's comment: each entry is a sum over 100 points, rounded to within about (100 + a
    few)·eps of the sum of its terms' magnitudes; those add up to less than 90 times the largest
    entry; so 1e-10 of the largest entry covers both computations' rounding with room to spare."""
    x, y = original_data()
    W1, b1, W2, b2 = seeded_weights()
    n = x.shape[0]
    h = torch.tanh(x @ W1 + b1)
    prediction = h @ W2 + b2
    residual = 2 * (prediction - y) / n  # d loss / d prediction
    # The magnitudes behind each residual: its two terms, so that their cancellation is counted.
    magnitude = 2 * (prediction.abs() + y.abs()) / n
    ratios = {
        "b2": magnitude.sum() / residual.sum().abs(),
        "W2": (h.abs().T @ magnitude).max() / (h.T @ residual).abs().max(),
    }
    upstream = (residual @ W2.T) * (1 - h**2)
    upstream_magnitude = (magnitude @ W2.abs().T) * (1 - h**2)
    ratios["b1"] = upstream_magnitude.sum(0).max() / upstream.sum(0).abs().max()
    ratios["W1"] = (x.abs().T @ upstream_magnitude).max() / (x.T @ upstream).abs().max()
    worst = max(r.item() for r in ratios.values())
    assert worst < 90, ratios
    assert max(ratios, key=ratios.get) == "b2"  # the residuals nearly cancel, as the comment says
    # Two computations, each within (100 + 10)·eps of the magnitudes: far inside 1e-10.
    assert 2 * (n + 10) * EPS * worst < 1e-10 / 10
    assert 1e-10 < torch.finfo(torch.float32).eps / 1000  # "a thousand times below float32's"


# -- [2] broadcasting ----------------------------------------------------------------------------------

def test_broadcasting_sums_the_bias_gradient_over_the_batch(lab):
    seen = lab.run(lesson.broadcasting_rule)
    generator = torch.Generator().manual_seed(1)
    batch = torch.randn(100, 8, generator=generator, dtype=F64)
    bias = torch.randn(8, generator=generator, dtype=F64)
    # d/db_j Σ_ij tanh(A_ij + b_j) = Σ_i (1 - tanh²(A_ij + b_j)), by hand
    by_hand = (1 - torch.tanh(batch + bias) ** 2).sum(dim=0)
    assert seen["tuple(b.grad.shape)"] == (8,)
    assert torch.allclose(cpu(seen["b.grad"]), by_hand, rtol=1e-12, atol=0)
    assert torch.allclose(cpu(seen["b.grad.reshape(-1)"]), by_hand, rtol=1e-12, atol=0)
    assert seen["tuple(A.grad.shape)"] == (100, 8)
    A = seen.names["A"]
    # Elementwise, and where 1 - tanh² is small an ulp of tanh is a larger part of it: absolute.
    assert torch.allclose(cpu(A.grad), 1 - torch.tanh(batch + bias) ** 2, rtol=1e-12, atol=1e-14)
    assert torch.equal(cpu(A.data), batch) and torch.equal(cpu(seen.names["b"].data), bias)
    # The lesson's own expectations: the upstream gradient by hand and torch.autograd's b.grad.
    assert torch.allclose(cpu(seen.names["upstream"]), 1 - torch.tanh(batch + bias) ** 2, rtol=1e-12, atol=1e-14)
    assert torch.allclose(cpu(seen.names["b_t"].grad), by_hand, rtol=1e-12, atol=0)


def test_pytorchs_engine_sums_an_unsummed_gradient_itself():
    """The lesson's comment on validate_outputs: a backward that returns the broadcast shape for a
    broadcast input still leaves .grad of the input's shape, summed."""

    class AddUnsummed(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, b):
            return a + b

        @staticmethod
        def backward(ctx, g):
            return g, g  # (100, 8) for b of shape (8,): no sum here

    a = random(100, 8, seed=3).requires_grad_()
    b = random(8, seed=4).requires_grad_()
    upstream = random(100, 8, seed=5)
    AddUnsummed.apply(a, b).backward(upstream)
    assert b.grad.shape == (8,)
    assert torch.allclose(b.grad, upstream.sum(dim=0), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("grad_shape, shape", [
    ((100, 8), (8,)), ((100, 8), (1, 8)), ((100, 8), (100, 1)), ((100, 8), (1, 1)), ((100, 8), ()),
    ((5, 4, 3), (4, 1)), ((5, 4, 3), (1, 4, 3)), ((5, 4, 3), (5, 4, 3)), ((2, 1, 3), (1, 1)),
])
def test_sum_to_is_pytorchs_sum_to_size(grad_shape, shape):
    grad = random(*grad_shape, seed=6)
    got = sum_to(grad, torch.Size(shape))
    assert got.shape == shape
    expected = grad.sum() if shape == () else grad.sum_to_size(shape)
    assert torch.allclose(got, expected.reshape(shape), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("left, right", [
    ((6, 4), (4,)), ((6, 4), (1, 4)), ((6, 1), (4,)), ((4,), (6, 4)), ((1, 4), (6, 1)), ((6, 4), (6, 4)),
    ((3, 6, 4), (6, 1)),
])
def test_broadcasting_add_and_sub_against_autograd(left, right):
    a, b = random(*left, seed=7), random(*right, seed=8)
    for op in (lambda p, q: p + q, lambda p, q: p - q):
        A, B = Node(a), Node(b)
        out = (op(A, B).tanh() ** 2).mean()
        out.backward()
        a_t, b_t = a.clone().requires_grad_(), b.clone().requires_grad_()
        expected = torch.autograd.grad((torch.tanh(op(a_t, b_t)) ** 2).mean(), (a_t, b_t))
        assert A.grad.shape == a.shape and B.grad.shape == b.shape
        assert torch.allclose(A.grad, expected[0], rtol=1e-10, atol=1e-14)
        assert torch.allclose(B.grad, expected[1], rtol=1e-10, atol=1e-14)


# -- [3] each local backward is a VJP ------------------------------------------------------------------

def test_local_backwards_are_vector_jacobian_products(lab):
    seen = lab.run(lesson.backward_is_a_vjp)
    generator = torch.Generator().manual_seed(2)
    a, W, v, u = (torch.randn(shape, generator=generator, dtype=F64) for shape in [(4, 3), (3, 2), (4, 3), (4, 2)])
    _, tanh_vjp = torch.func.vjp(torch.tanh, a)
    assert torch.allclose(cpu(seen["engine_tanh"]), tanh_vjp(v)[0], rtol=1e-12, atol=1e-15)
    assert torch.allclose(cpu(seen["engine_tanh"]), v * (1 - torch.tanh(a) ** 2), rtol=1e-12, atol=1e-15)
    assert torch.allclose(cpu(seen["engine_tanh.reshape(-1)"]), tanh_vjp(v)[0].reshape(-1), rtol=1e-12, atol=1e-15)
    J = torch.func.jacrev(torch.tanh)(a).reshape(12, 12)
    assert torch.allclose(cpu(seen.names["J"]), J, rtol=1e-12, atol=0)
    assert torch.count_nonzero(J - torch.diag(J.diagonal())) == 0
    assert seen["torch.equal(J, torch.diag(J.diagonal()))"] is True
    # The lesson's route, the gradient of (v * y).sum(), is backward(v): grad with grad_outputs=v.
    a_t, W_t = a.clone().requires_grad_(), W.clone().requires_grad_()
    by_grad_outputs = torch.autograd.grad(a_t @ W_t, (a_t, W_t), grad_outputs=u)
    assert torch.allclose(cpu(seen["engine_mm[0]"]), by_grad_outputs[0], rtol=1e-12, atol=1e-15)
    assert torch.allclose(cpu(seen["engine_mm[1]"]), by_grad_outputs[1], rtol=1e-12, atol=1e-15)
    assert torch.allclose(cpu(seen["engine_mm[0]"]), u @ W.T, rtol=1e-12, atol=1e-15)
    assert torch.allclose(cpu(seen["engine_mm[1]"]), a.T @ u, rtol=1e-12, atol=1e-15)
    (tanh_by_grad_outputs,) = torch.autograd.grad(torch.tanh(a_t), a_t, grad_outputs=v)
    assert torch.allclose(cpu(seen.names["torch_tanh"]), tanh_by_grad_outputs, rtol=1e-12, atol=1e-15)
    for got, want in zip(seen.names["torch_mm"], by_grad_outputs):
        assert torch.allclose(cpu(got), want, rtol=1e-12, atol=1e-15)


def upstream_for(out: torch.Tensor, seed: int) -> torch.Tensor:
    return random(*out.shape, seed=seed) if out.dim() else torch.tensor(1.7, dtype=F64)


OPS = {  # name: (engine op, torch op, input shapes)
    "matmul": (lambda a, b: a @ b, lambda a, b: a @ b, [(5, 3), (3, 4)]),
    "add": (lambda a, b: a + b, lambda a, b: a + b, [(5, 3), (3,)]),
    "sub": (lambda a, b: a - b, lambda a, b: a - b, [(5, 1), (1, 3)]),
    "pow2": (lambda a: a**2, lambda a: a**2, [(5, 3)]),
    "pow3": (lambda a: a**3, lambda a: a**3, [(5, 3)]),
    "tanh": (lambda a: a.tanh(), torch.tanh, [(5, 3)]),
    "sum": (lambda a: a.sum(), torch.sum, [(5, 3)]),
    "mean": (lambda a: a.mean(), torch.mean, [(5, 3)]),
}


@pytest.mark.parametrize("name", OPS)
def test_each_op_forward_and_vjp_against_autograd(name):
    engine_op, torch_op, shapes = OPS[name]
    inputs = [random(*shape, seed=10 + i) for i, shape in enumerate(shapes)]
    nodes = [Node(t) for t in inputs]
    out = engine_op(*nodes)
    leaves = [t.clone().requires_grad_() for t in inputs]
    expected_out = torch_op(*leaves)
    assert torch.allclose(out.data, expected_out.detach(), rtol=1e-12, atol=1e-14)
    assert out.op == name.rstrip("23") and out.parents == tuple(nodes)
    v = upstream_for(expected_out, seed=20)
    shares = out.local_backward(v, out.saved)
    expected = torch.autograd.grad(expected_out, leaves, grad_outputs=v)
    assert len(shares) == len(inputs)
    for share, want in zip(shares, expected):
        assert share.shape == want.shape
        assert torch.allclose(share, want, rtol=1e-12, atol=1e-14), name
    assert not out.data.requires_grad and out.data.grad_fn is None


def test_a_composite_against_autograd_and_central_differences():
    a, W, b, c = random(6, 3, seed=30), random(3, 2, seed=31), random(2, seed=32), random(6, 2, seed=33)

    def engine(a_, W_):
        A, Wn, B, C = Node(a_), Node(W_), Node(b), Node(c)
        return A, Wn, (((A @ Wn + B).tanh() - C) ** 3).mean()

    A, Wn, loss = engine(a, W)
    loss.backward()
    a_t, W_t = a.clone().requires_grad_(), W.clone().requires_grad_()
    ga, gW = torch.autograd.grad(((torch.tanh(a_t @ W_t + b) - c) ** 3).mean(), (a_t, W_t))
    assert torch.allclose(A.grad, ga, rtol=1e-10, atol=1e-14)
    assert torch.allclose(Wn.grad, gW, rtol=1e-10, atol=1e-14)
    h = 1e-6
    for k in range(W.numel()):
        plus, minus = W.clone(), W.clone()
        plus.view(-1)[k] += h
        minus.view(-1)[k] -= h
        fd = (engine(a, plus)[2].data - engine(a, minus)[2].data).item() / (2 * h)
        assert Wn.grad.view(-1)[k].item() == pytest.approx(fd, abs=1e-8)


def test_a_node_used_twice_gets_both_shares():
    a = random(3, 3, seed=40)
    A = Node(a)
    (A + A).sum().backward()
    assert torch.equal(A.grad, torch.full((3, 3), 2.0, dtype=F64))
    B = Node(a)
    (B @ B).sum().backward()  # d/dB Σ (B B) = G Bᵀ + Bᵀ G with G all ones
    ones = torch.ones(3, 3, dtype=F64)
    assert torch.allclose(B.grad, ones @ a.T + a.T @ ones, rtol=1e-12, atol=1e-14)


def test_a_grad_is_complete_before_it_is_passed_on():
    """A diamond: h feeds both branches; in creation order h would pass on its grad before the
    second branch added its share."""
    a = random(4, seed=41)
    A = Node(a)
    H = A.tanh()
    loss = ((H**2) - H.tanh()).sum()
    loss.backward()
    a_t = a.clone().requires_grad_()
    h_t = torch.tanh(a_t)
    (expected,) = torch.autograd.grad((h_t**2 - torch.tanh(h_t)).sum(), a_t)
    assert torch.allclose(A.grad, expected, rtol=1e-12, atol=1e-14)


def test_backward_adds_to_what_is_there_and_starts_from_one():
    a = random(5, seed=42)
    A = Node(a)
    assert torch.equal(A.grad, torch.zeros(5, dtype=F64)) and A.parents == () and A.op == "leaf"
    out = A.sum()
    out.backward()
    out.backward()  # a second backward adds again, as torch's .grad does
    assert torch.equal(A.grad, torch.full((5,), 2.0, dtype=F64))
    assert torch.equal(out.grad, torch.tensor(1.0, dtype=F64))


# -- [4] what each node keeps -----------------------------------------------------------------------

def test_what_each_node_keeps(lab):
    seen = lab.run(lesson.what_each_node_keeps)
    # By the local derivatives: pow needs its input, matmul both inputs, tanh its output; add, sub
    # and mean need only shapes. The graph from the loss: mean, pow, sub, add, matmul, tanh, add, matmul.
    assert seen["[node.op for node in engine_nodes]"] == ["mean", "pow", "sub", "add", "matmul", "tanh", "add",
                                                          "matmul"]
    assert seen["engine_keeps"] == [[], ["self"], [], [], ["mat2", "self"], ["result"], [], ["mat2", "self"]]
    assert seen['[type(grad_fn).__name__.removesuffix("Backward0") for grad_fn in torch_nodes]'] == [
        "Mean", "Pow", "Sub", "Add", "Mm", "Tanh", "Add", "Mm"]
    assert seen["torch_keeps"] == [[], ["self"], [], [], ["mat2", "self"], ["result"], [], ["self"]]
    assert seen["(first_mm._saved_self is x_data, first_mm._saved_mat2)"] == (True, None)
    assert seen['h.saved["result"] is h.data'] is True
    assert seen["torch.equal(h_t.grad_fn._saved_result, h_t)"] is True
    h = seen.names["h"]
    x, _ = original_data()
    W1, b1, _, _ = seeded_weights()
    assert torch.allclose(cpu(h.data), torch.tanh(x @ W1 + b1), rtol=1e-12, atol=1e-15)
    # The table the lesson prints: op, what it keeps, torch's node, what that keeps.
    printed = [line.strip() for line in lab.stream.getvalue().splitlines()]
    rows = [("mean", "-", "MeanBackward0", "-"), ("pow", "self", "PowBackward0", "self"),
            ("sub", "-", "SubBackward0", "-"), ("add", "-", "AddBackward0", "-"),
            ("matmul", "mat2, self", "MmBackward0", "mat2, self"), ("tanh", "result", "TanhBackward0", "result"),
            ("add", "-", "AddBackward0", "-"), ("matmul", "mat2, self", "MmBackward0", "self")]
    table = [re.fullmatch(r"(\w+) +keeps (.+?) +(\w+Backward0) +keeps (.+)", line) for line in printed]
    assert [match.groups() for match in table if match] == rows


def test_torch_keeps_a_tensor_only_for_a_gradient_asked_for():
    """What the lesson reads from torch's graph, read here from single ops."""
    x, W = random(5, 1, seed=50), random(1, 3, seed=51)
    W_t = W.clone().requires_grad_()
    only_w = (x @ W_t).grad_fn
    assert type(only_w).__name__ == "MmBackward0"
    assert only_w._saved_self is x and only_w._saved_mat2 is None
    x_t = x.clone().requires_grad_()
    both = (x_t @ W_t).grad_fn
    assert both._saved_self is x_t and both._saved_mat2 is W_t
    assert lesson.saved_tensor_names(only_w) == ["self"] and lesson.saved_tensor_names(both) == ["mat2", "self"]
    y = torch.tanh(x_t)
    assert lesson.saved_tensor_names(y.grad_fn) == ["result"] and torch.equal(y.grad_fn._saved_result, y)
    assert lesson.saved_tensor_names((x_t + W_t).grad_fn) == []
    assert lesson.saved_tensor_names((x_t**2).grad_fn) == ["self"] and (x_t**2).grad_fn._saved_exponent == 2


def test_torch_graph_walks_to_the_leaves_without_accumulate_grad():
    x = random(3, seed=52).requires_grad_()
    names = [type(fn).__name__ for fn in lesson.torch_graph((torch.tanh(x) * 2).sum().grad_fn)]
    assert names == ["SumBackward0", "MulBackward0", "TanhBackward0"]
    assert lesson.torch_graph(None) == []


def test_mlp_weights_are_the_seeded_draws():
    for hidden, seed in ((8, 0), (3, 5)):
        got = lesson.mlp_weights(hidden=hidden, seed=seed)
        assert [tuple(w.shape) for w in got] == [(1, hidden), (hidden,), (hidden, 1), (1,)]
        assert all(torch.equal(g, e) for g, e in zip(got, seeded_weights(hidden, seed)))


def test_the_printed_code_is_the_lesson_source(lab):
    lab.run(lesson.mlp_against_autograd)
    printed = lab.stream.getvalue()
    for line in ("loss = ((((x @ W1 + b1).tanh() @ W2 + b2) - y) ** 2).mean()", "loss.backward()",
                 "loss_t.backward()"):
        assert f"\n    {line}" in printed, line
    assert "lab.check" not in printed
    assert math.isfinite(float(lab.seen["loss.data"]))

"""02 · tensor engine: the scalar engine's backward() over tensors, checked against torch.autograd.

The same idea as 02 scalar engine, one number per node replaced by one tensor per node: each node
keeps its data, its gradient, the nodes it was made from and a local backward; backward() visits
the nodes in reverse topological order and adds each local result into the parents' .grad. The
data are plain tensors: torch computes the numbers, the engine alone computes the gradients. A
small MLP on the original data gets the gradients torch.autograd gets; then the three things a
tensor engine adds to a scalar one: broadcasting in backward, each backward as a vector-Jacobian
product (05 vjp), and what each node keeps for its backward (06 saved tensors).
"""

# %% Setup
import math

import torch

from tensor_features.lab import Lab, Try
from tensor_features.load_data import load_data

lab = Lab.start("02 · tensor engine", __doc__, __name__)


# %% The engine: a Node, its seven ops, backward()
# A Node holds a plain tensor (.data), the gradient of the final scalar with respect to it
# (.grad, the same shape), the nodes it was made from (.parents), what its backward reads from
# the forward (.saved) and that backward: a function from the gradient of this node to one
# gradient per parent. In PyTorch a tensor and its grad_fn are two objects; a Node is both.
# Each op computes its result with an ordinary torch call on plain tensors and writes down its
# local derivative. backward() orders the graph so that every node comes after the nodes it was
# made from, walks that order backwards from the loss, and adds each parent's share into its
# .grad: a node used twice gets the sum of both shares.
def sum_to(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Undo broadcasting in backward: sum grad over the dimensions broadcasting added in front,
    then over those it stretched from size 1, back to `shape` (PyTorch: Tensor.sum_to_size)."""
    while grad.dim() > len(shape):
        grad = grad.sum(dim=0)  # a dimension added in front: (100, 8) -> (8,)
    for dim, size in enumerate(shape):
        if size == 1 and grad.shape[dim] != 1:
            grad = grad.sum(dim=dim, keepdim=True)  # a dimension stretched from 1
    return grad


class Node:
    """A tensor in the engine's graph: data, grad, parents, saved, and a local backward."""

    def __init__(self, data, parents=(), op="leaf", saved=None, local_backward=None, name=""):
        self.data = data  # a plain tensor: requires_grad False, so torch records no graph
        self.grad = torch.zeros_like(data)  # d loss / d data, filled in by backward()
        self.parents, self.op, self.name = parents, op, name  # a name for a leaf: x, W1, ...
        self.saved = saved or {}  # what local_backward reads from the forward
        self.local_backward = local_backward  # (grad of this node, saved) -> grad per parent

    # C = A @ B has entries Cᵢⱼ = Σₖ Aᵢₖ·Bₖⱼ, so ∂Cᵢⱼ/∂Aᵢₖ = Bₖⱼ: the share of Aᵢₖ is Σⱼ Gᵢⱼ·Bₖⱼ,
    # all at once G Bᵀ (G the gradient of C); likewise the share of B is Aᵀ G.
    def __matmul__(self, other):  # (n, k) @ (k, m): d/dA = G Bᵀ, d/dB = Aᵀ G
        return Node(self.data @ other.data, (self, other), "matmul",
                    {"self": self.data, "mat2": other.data},
                    lambda g, s: (g @ s["mat2"].T, s["self"].T @ g))

    def __add__(self, other):  # broadcasts, (100, 8) + (8,): each share summed back to shape
        return Node(self.data + other.data, (self, other), "add",
                    {"shapes": (self.data.shape, other.data.shape)},
                    lambda g, s: (sum_to(g, s["shapes"][0]), sum_to(g, s["shapes"][1])))

    def __sub__(self, other):
        return Node(self.data - other.data, (self, other), "sub",
                    {"shapes": (self.data.shape, other.data.shape)},
                    lambda g, s: (sum_to(g, s["shapes"][0]), -sum_to(g, s["shapes"][1])))

    def __pow__(self, k: int):  # d(aᵏ)/da = k aᵏ⁻¹
        return Node(self.data**k, (self,), "pow", {"self": self.data, "exponent": k},
                    lambda g, s: (g * s["exponent"] * s["self"] ** (s["exponent"] - 1),))

    def tanh(self):  # d tanh(a)/da = 1 - tanh(a)²: the output is all it needs
        result = torch.tanh(self.data)
        return Node(result, (self,), "tanh", {"result": result},
                    lambda g, s: (g * (1 - s["result"] ** 2),))

    def sum(self):  # every element gets the scalar's gradient
        return Node(self.data.sum(), (self,), "sum", {"shape": self.data.shape},
                    lambda g, s: (g.expand(s["shape"]),))

    def mean(self):  # every element gets 1/n of it
        return Node(self.data.mean(), (self,), "mean", {"shape": self.data.shape},
                    lambda g, s: (g.expand(s["shape"]) / math.prod(s["shape"]),))

    def topological_order(self) -> list["Node"]:
        """This node and every node it was made from, each after all of its parents."""
        order, visited = [], set()

        def visit(node):
            if node not in visited:
                visited.add(node)
                for parent in node.parents:
                    visit(parent)
                order.append(node)  # only once all of its parents are in the list

        visit(self)
        return order

    def backward(self) -> None:
        """Add d self / d leaf into every leaf's .grad behind this scalar, as the scalar engine's
        backward() does (the intermediate nodes' .grad start again from 0 on each call)."""
        order = self.topological_order()
        for node in order:
            if node.parents:  # an intermediate node: its .grad belongs to this backward alone
                node.grad = torch.zeros_like(node.data)
        self.grad = self.grad + torch.ones_like(self.data)  # d self / d self = 1
        # Reversed: a node is visited only after every node made from it, so its .grad is
        # complete when it passes it on.
        for node in reversed(order):
            if node.parents:
                shares = node.local_backward(node.grad, node.saved)
                for parent, share in zip(node.parents, shares):
                    parent.grad = parent.grad + share  # the scalar engine's +=, on tensors


def mlp_weights(hidden: int = 8, seed: int = 0) -> list[torch.Tensor]:
    """Seeded float64 weights of a 1 → hidden → 1 MLP, W1 (1, h), b1 (h,), W2 (h, 1), b2 (1,),
    on the default device (the lab's, inside an observation)."""
    generator = torch.Generator().manual_seed(seed)
    # A CPU generator draws on the CPU (device="cpu"), the same numbers whatever the default
    # device; .to() then moves them there.
    device = torch.get_default_device()
    shapes = [(1, hidden), (hidden,), (hidden, 1), (1,)]
    return [torch.randn(shape, generator=generator, dtype=torch.float64, device="cpu").to(device)
            for shape in shapes]


# %% [1] A 1 → 8 → 1 MLP on the original data: the engine against torch.autograd
# The original regression's 100 points (load_data(n=100, noise=0.1, seed=0), the trainer's
# float32 data) turned into float64, and the model tanh(x W1 + b1) W2 + b2 at seeded random
# weights, with the mean squared error. The engine computes the loss and its
# gradients with respect to the four weights; torch.autograd computes them again from the same
# numbers. The two evaluate the same formulas, but not always with the same kernels in the same
# order (a matrix product may add its terms in another order; torch's vectorised tanh backward
# may round differently from g * (1 - tanh²) written out), so they agree to float64 rounding,
# not always bit for bit. Each gradient entry is a sum over the 100 points, which float64 rounds
# to within about 100·eps ≈ 2.2e-14 times the sum of its terms' magnitudes (Higham, Accuracy and
# Stability of Numerical Algorithms, §4.2), plus a few eps for the ops before it. For each of the
# four gradients here, that sum of magnitudes is under 90 times the gradient's largest entry (the
# most for b2, whose 100 residuals nearly cancel), so the checks allow 1e-10 of the largest
# entry: float64 rounding with room to spare, and a thousand times below float32's (eps ≈ 1.2e-7).
def mlp_against_autograd(lab: Lab) -> None:
    """The loss and the four weight gradients of a 1 → 8 → 1 tanh MLP: engine vs torch.autograd"""
    # load_data draws on the CPU with its own generator and moves the data to the device it is
    # given (device=lab.device): it does not follow the default device.
    x_data, y_data = load_data(n=100, noise=0.1, seed=0, device=lab.device)
    x_data, y_data = x_data.double(), y_data.double()  # the trainer's numbers, in float64
    weights = mlp_weights(hidden=8)
    x, y = Node(x_data, name="x"), Node(y_data, name="y")
    W1, b1, W2, b2 = (Node(w, name=name) for w, name in zip(weights, ("W1", "b1", "W2", "b2")))
    loss = ((((x @ W1 + b1).tanh() @ W2 + b2) - y) ** 2).mean()
    loss.backward()

    order = loss.topological_order()
    lab.check([node.name or node.op for node in reversed(order)],
              ["mean", "pow", "sub", "y", "add", "b2", "matmul", "W2", "tanh", "add", "b1",
               "matmul", "W1", "x"], "the loss first, then each node once every node made from it "
              "has passed its share on", label="the order backward() visits")
    lab.check(all(order.index(p) < order.index(node) for node in order for p in node.parents),
              True, "every node comes after the nodes it was made from", label="topological")
    plain = [t for node in order for t in (node.data, node.grad)]
    lab.check(any(t.requires_grad or t.grad_fn is not None for t in plain), False,
              "no tensor in the engine asked torch for a gradient: torch's autograd never ran",
              label="any requires_grad or grad_fn")

    # torch.autograd on the same numbers: leaves that require grad, the same formula.
    leaves = [w.clone().requires_grad_() for w in weights]
    W1_t, b1_t, W2_t, b2_t = leaves
    loss_t = ((torch.tanh(x_data @ W1_t + b1_t) @ W2_t + b2_t - y_data) ** 2).mean()
    loss_t.backward()
    lab.check(loss.data, loss_t, "the same forward", rtol=1e-12, atol=0.0)
    for name, node, leaf in zip(("W1", "b1", "W2", "b2"), (W1, b1, W2, b2), leaves):
        scale = leaf.grad.abs().max().item()
        lab.check(node.grad, leaf.grad, "torch.autograd's, to float64 rounding",
                  rtol=0.0, atol=1e-10 * scale, label=f"{name}.grad")


lab.run(mlp_against_autograd)


# %% [2] Broadcasting in backward: a bias added to every row gets the sum of their gradients
# b has shape (8,) and is added to a (100, 8) batch: broadcasting uses the same 8 numbers for
# each of the 100 rows, so a change in b[j] moves all 100 outputs of column j, and its gradient
# is the upstream gradient summed over the batch dimension. That is sum_to in the engine's add.
# PyTorch does this sum in its engine, for every op: validate_outputs in
# torch/csrc/autograd/engine.cpp sums a gradient that has its input's broadcast shape back to
# the input's shape (at::sum_to).
def broadcasting_rule(lab: Lab) -> None:
    """b of shape (8,) added to a (100, 8) batch: b.grad sums the upstream gradient over rows"""
    generator = torch.Generator().manual_seed(1)
    # Drawn on the CPU, where the generator is, then moved to the lab's device.
    batch = torch.randn(100, 8, generator=generator, dtype=torch.float64, device="cpu")
    bias = torch.randn(8, generator=generator, dtype=torch.float64, device="cpu")
    A, b = Node(batch.to(lab.device)), Node(bias.to(lab.device))
    out = (A + b).tanh().sum()
    out.backward()
    # What reaches the add from above: d out / d(A + b) = 1 - tanh², one number per element.
    upstream = 1 - torch.tanh(A.data + b.data) ** 2
    lab.check(tuple(b.grad.shape), tuple(b.data.shape), "b's own shape, not the batch's")
    # Sums of 100 positive terms (1 - tanh² > 0), each within a few eps of the other side's:
    # the sums agree to about 100·eps ≈ 2e-14, relative, here and with torch.autograd below.
    lab.check(b.grad.reshape(-1), upstream.sum(dim=0), "the upstream gradient summed over the "
              "batch dimension", rtol=1e-12, atol=0.0)
    lab.check(tuple(A.grad.shape), (100, 8), "A was not broadcast: its share passes unchanged")
    b_t = b.data.clone().requires_grad_()
    torch.tanh(A.data + b_t).sum().backward()
    lab.check(b.grad, b_t.grad, "torch.autograd's", rtol=1e-12, atol=0.0)


lab.run(broadcasting_rule)


# %% [3] Each local backward is a vector-Jacobian product
# A node's local backward takes the gradient of its output, v, and returns vᵀJ, J the Jacobian
# of the op (the matrix of ∂ outputᵢ / ∂ inputⱼ, each tensor flattened into a vector, so a 4×3 v
# is a vector of 12): the product 05 vjp gets from y.backward(v). torch.autograd computes it here
# as the gradient of the scalar (v * y).sum(), since d/da Σᵢ vᵢ yᵢ(a) = Σᵢ vᵢ ∂yᵢ/∂a = vᵀJ. Neither
# forms J: tanh on a 4×3 input has a 12×12 Jacobian, diagonal, and its backward multiplies v
# by that diagonal, 1 - tanh², elementwise.
def backward_is_a_vjp(lab: Lab) -> None:
    """The local backward of tanh and of matmul with an upstream v, against torch.autograd"""
    generator = torch.Generator().manual_seed(2)
    # Drawn on the CPU, where the generator is, then moved to the lab's device.
    a_data, W_data, v, u = (
        torch.randn(shape, generator=generator, dtype=torch.float64, device="cpu").to(lab.device)
        for shape in [(4, 3), (3, 2), (4, 3), (4, 2)])
    a, W = Node(a_data), Node(W_data)
    t = a.tanh()
    (engine_tanh,) = t.local_backward(v, t.saved)
    a_t = a_data.clone().requires_grad_()
    (torch_tanh,) = torch.autograd.grad((v * torch.tanh(a_t)).sum(), a_t)
    # Elementwise products, or sums of at most 4 of them: equal to a few float64 ulps.
    lab.check(engine_tanh, torch_tanh, "vᵀJ from torch.autograd", rtol=1e-12, atol=1e-15)
    J = torch.autograd.functional.jacobian(torch.tanh, a_data).reshape(12, 12)
    lab.check(engine_tanh.reshape(-1), v.reshape(-1) @ J, "vᵀJ with the 12×12 J formed",
              rtol=1e-12, atol=1e-15)
    lab.check(torch.equal(J, torch.diag(J.diagonal())), True,
              "J is diagonal: each output of tanh depends on one input alone")
    m = a @ W
    engine_mm = m.local_backward(u, m.saved)
    W_t = W_data.clone().requires_grad_()
    torch_mm = torch.autograd.grad((u * (a_t @ W_t)).sum(), (a_t, W_t))
    lab.check(engine_mm[0], torch_mm[0], "uᵀJ of a @ W with respect to a: u Wᵀ",
              rtol=1e-12, atol=1e-15)
    lab.check(engine_mm[1], torch_mm[1], "and with respect to W: aᵀ u", rtol=1e-12, atol=1e-15)


lab.run(backward_is_a_vjp)


# %% [4] What each node keeps for its backward, beside what torch's graph keeps
# A local backward can only use what its node kept from the forward: matmul keeps both inputs
# (d/dA needs B, d/dB needs A), tanh its output, pow its input and exponent; add, sub, sum and
# mean keep only shapes. PyTorch's nodes keep the same tensors here (06 saved tensors reads them
# as grad_fn._saved_*), but one: x @ W1 needs W1 only for x's gradient, and x is data that asks
# for none, so torch's MmBackward0 does not keep W1. The engine computes every gradient, x's
# included, so it keeps both.
def saved_tensor_names(grad_fn) -> list[str]:
    """The names of the tensors a torch graph node keeps (its _saved_* attributes that hold one)."""
    names = [name for name in dir(grad_fn) if name.startswith("_saved_")]
    return sorted(name.removeprefix("_saved_") for name in names
                  if isinstance(getattr(grad_fn, name), torch.Tensor))


def torch_graph(grad_fn) -> list:
    """torch's graph nodes from grad_fn towards the leaves, depth first, AccumulateGrad left out."""
    if grad_fn is None or hasattr(grad_fn, "variable"):  # AccumulateGrad has .variable
        return []
    nodes = [grad_fn]
    for next_fn, _input_index in grad_fn.next_functions:
        nodes += torch_graph(next_fn)
    return nodes


def what_each_node_keeps(lab: Lab) -> None:
    """The tensors each node of the MLP's graph keeps: the engine's and torch's grad_fn's"""
    # The MLP of [1] again (load_data moves its data to the device it is given).
    x_data, y_data = load_data(n=100, noise=0.1, seed=0, device=lab.device)
    x_data, y_data = x_data.double(), y_data.double()
    weights = mlp_weights(hidden=8)
    x, y = Node(x_data), Node(y_data)
    W1, b1, W2, b2 = (Node(w) for w in weights)
    h = (x @ W1 + b1).tanh()
    loss = (((h @ W2 + b2) - y) ** 2).mean()
    W1_t, b1_t, W2_t, b2_t = (w.clone().requires_grad_() for w in weights)
    h_t = torch.tanh(x_data @ W1_t + b1_t)
    loss_t = ((h_t @ W2_t + b2_t - y_data) ** 2).mean()

    engine_nodes = [node for node in reversed(loss.topological_order()) if node.parents]
    torch_nodes = torch_graph(loss_t.grad_fn)
    engine_keeps = [sorted(k for k, v in node.saved.items() if isinstance(v, torch.Tensor))
                    for node in engine_nodes]
    torch_keeps = [saved_tensor_names(grad_fn) for grad_fn in torch_nodes]
    lab.note("\n".join(f"{node.op:<7} keeps {', '.join(mine) or '-':<12} "
                       f"{type(grad_fn).__name__:<14} keeps {', '.join(its) or '-'}"
                       for node, mine, grad_fn, its
                       in zip(engine_nodes, engine_keeps, torch_nodes, torch_keeps)))
    lab.check([node.op for node in engine_nodes],
              ["mean", "pow", "sub", "add", "matmul", "tanh", "add", "matmul"],
              "the loss back to x @ W1: one node per op")
    lab.check([type(grad_fn).__name__.removesuffix("Backward0") for grad_fn in torch_nodes],
              ["Mean", "Pow", "Sub", "Add", "Mm", "Tanh", "Add", "Mm"],
              "torch's graph, the same ops")
    lab.check(engine_keeps,
              [[], ["self"], [], [], ["mat2", "self"], ["result"], [], ["mat2", "self"]],
              "pow its input, matmul both inputs, tanh its output")
    lab.check(torch_keeps, [[], ["self"], [], [], ["mat2", "self"], ["result"], [], ["self"]],
              "the same, except the last: x @ W1 keeps x for W1's gradient, not W1")
    first_mm = torch_nodes[-1]
    lab.check((first_mm._saved_self is x_data, first_mm._saved_mat2), (True, None),
              "x itself; no W1, since x asked for no gradient")
    lab.check(h.saved["result"] is h.data, True, "the engine's tanh node, h, keeps its own output")
    lab.check(torch.equal(h_t.grad_fn._saved_result, h_t), True,
              "TanhBackward0 keeps its output too")


lab.run(what_each_node_keeps)


# %% The end
TRIES = [
    Try("the same checks with every tensor of the engine on the GPU", flags="--device cuda",
        needs_cuda=True),
    Try("sum_to hands each share back unsummed: zeros(8) + a (100, 8) share broadcasts without "
        "an error, so b1.grad, b2.grad and [2]'s b.grad take the batch's shape and their checks "
        "fail; the weights' gradients still match",
        edit=("    while grad.dim() > len(shape):",
              "    return grad  # the sum dropped\n    while grad.dim() > len(shape):"),
        where=sum_to),
    Try("b of shape (1, 8): broadcasting stretches its first dimension instead of adding one, "
        "sum_to sums it with keepdim, and b.grad keeps the shape (1, 8); the checks still match",
        edit=("bias = torch.randn(8,", "bias = torch.randn(1, 8,"), where=broadcasting_rule),
    Try("x, as a clone that requires grad, asks torch for a gradient too: MmBackward0 then "
        "keeps W1 as well, as the engine's matmul does, and the x it keeps is that clone, so "
        "the two checks that said otherwise fail",
        edit=("h_t = torch.tanh(x_data @ W1_t + b1_t)",
              "h_t = torch.tanh(x_data.clone().requires_grad_() @ W1_t + b1_t)"),
        where=what_each_node_keeps),
]
lab.finish(TRIES)

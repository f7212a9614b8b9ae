"""04 · graph pictured: the real graph autograd records, node by node, and what it keeps.

Every differentiable op on a tensor that requires grad (outside no_grad) adds a node to a graph,
and backward() walks that graph from the output to the leaves. Here the graph is read from grad_fn
(tensor_features/lab/graph.py) and shown as a tree (a picture in a notebook, or with --graphs
DIR): the original example, the trainer's loss with the tensors its nodes keep for backward and
their bytes, a small MLP whose leaves are its parameters, and the same loss after backward(), its
saved tensors freed.
"""

# %% Setup
import torch
from torch import nn

from tensor_features.lab import Lab, Try
from tensor_features.lab.graph import diff, read_graph
from tensor_features.load_data import load_data
from tensor_features.trainer.model import initial_weights
from tensor_features.utils import feature_map

lab = Lab.start("04 · graph pictured", __doc__, __name__)


def trainer_start(lab: Lab) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The trainer's data Φ, y (100 points, noise 0.1, seed 0) and its first w, 3×1."""
    # load_data and initial_weights draw on the CPU with their own generator, then move to the
    # device they are given: the same numbers on a machine's CPU and on its GPU.
    x, y = load_data(n=100, noise=0.1, seed=0, device=lab.device)
    w = initial_weights(3, seed=0, device=lab.device)  # drawn on the CPU too, then moved
    return feature_map(x), y, w


# %% [1] The original example, as a graph
# y = x**2 + 2x is Add(Pow(x), Mul(x, 2)). x is a leaf: made, not computed, with
# requires_grad=True. backward() ends at its AccumulateGrad node, which adds the gradient into
# x.grad (a tensor that needs no gradient counts as a leaf too, but gets no such node). Each node
# saves what its derivative needs, under the name of the op's argument (self, other; mm's self and
# mat2; result for an op's own output): pow keeps its base x (d/dx x² = 2x), mul keeps the other
# factor, the 2, which torch wraps as an int64 tensor. The 2 needs no gradient, so mul's second
# input is a None edge; x is one leaf, reached from both terms.
def original_graph(lab: Lab) -> None:
    """y = x**2 + 2x at x = 3: Add(Pow(x), Mul(x, 2))"""
    x = torch.tensor(3.0, requires_grad=True)
    y = x**2 + 2 * x
    graph = lab.graph(y, names={"x": x})
    lab.check([node.name for node in graph.nodes],
              ["AddBackward0", "PowBackward0", "AccumulateGrad", "MulBackward0"],
              "Add(Pow(x), Mul(x, 2)); x's AccumulateGrad is one node, shared by both terms")
    power, product = graph.nodes[1], graph.nodes[3]
    lab.check([(saved.slot, saved.tensor.name) for saved in power.saved], [("self", "x")],
              "pow keeps x itself, not a copy: d/dx x² = 2x needs it")
    lab.check(product.inputs, ("n2", None),
              "mul's inputs: x's AccumulateGrad, and None for the 2, which needs no gradient")
    lab.check([(saved.slot, saved.tensor.values) for saved in product.saved], [("other", (2,))],
              "mul keeps the other factor, the 2: d/dx 2x = 2")


lab.run(original_graph)


# %% [2] The trainer's loss and what its nodes keep
# The trainer's loss ((Φw − y)**2).mean(), with w the only leaf that requires grad. Mm keeps Φ
# (100×3 float32, 1200 bytes): w's gradient is Φᵀ·(upstream). It keeps no w, since Φ needs no
# gradient. Pow keeps the residual (100×1, 400 bytes) for 2·residual; sub and mean keep no
# tensor. These tensors stay alive until backward() has used them, or until the graph is dropped.
def trainer_loss_graph(lab: Lab) -> None:
    """The trainer's loss: Mean(Pow(Sub(Mm(Φ, w), y))), and the bytes it keeps"""
    Phi, y, w = trainer_start(lab)
    w.requires_grad_()
    residual = Phi @ w - y
    loss = (residual**2).mean()
    graph = lab.graph(loss, names={"Phi": Phi, "y": y, "w": w, "residual": residual})
    lab.check([node.name for node in graph.nodes],
              ["MeanBackward0", "PowBackward0", "SubBackward0", "MmBackward0", "AccumulateGrad"],
              "Mean(Pow(Sub(Mm(Φ, w), y))); only w, a leaf that requires grad, has AccumulateGrad")
    kept = [(node.name, saved.slot, saved.tensor.name, saved.tensor.nbytes)
            for node in graph.nodes for saved in node.saved]
    lab.check(kept, [("PowBackward0", "self", "residual", 400),
                     ("MmBackward0", "self", "Phi", 1200)],
              "pow keeps the residual (100 × 4 bytes), mm keeps Φ (100 × 3 × 4 bytes)")
    lab.check(sum(nbytes for *_, nbytes in kept), 1600,
              "the saved tensors hold 1600 bytes of elements (numel × element_size): 400 + 1200")


lab.run(trainer_loss_graph)


# %% [3] A two-layer MLP: one leaf per parameter
# On a 2-D input (a batch of rows), nn.Linear computes x·Wᵀ + b as one addmm node; its weight goes
# through a transpose (T) first. Every parameter is a leaf with its own AccumulateGrad, named here
# by the module's own parameter names; each shows version 1, because nn.Linear fills it in place
# once when it is made (kaiming_uniform_, uniform_). The input x needs no gradient, so it gets no
# AccumulateGrad: it is only a tensor addmm keeps.
def mlp_graph(lab: Lab) -> None:
    """nn.Sequential(Linear(1, 4), Tanh(), Linear(4, 1)) on 5 points: 4 parameter leaves"""
    torch.manual_seed(0)  # the same initial weights on every run
    model = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1))
    x = torch.linspace(-1, 1, 5).unsqueeze(1)
    out = model(x)
    graph = lab.graph(out, names={**dict(model.named_parameters()), "x": x})
    leaves = [node.leaf.tensor.name for node in graph.nodes if node.name == "AccumulateGrad"]
    lab.check(sorted(leaves), ["0.bias", "0.weight", "2.bias", "2.weight"],
              "one AccumulateGrad per weight and bias, and none for x")
    lab.check(sorted(node.name for node in graph.nodes if node.leaf is None),
              ["AddmmBackward0", "AddmmBackward0", "TBackward0", "TBackward0", "TanhBackward0"],
              "each Linear is an addmm with a transposed weight; tanh sits between them")


lab.run(mlp_graph)


# %% [4] After backward(): the saved tensors are freed
# backward() drops the nodes' references to what they kept as soon as it has used them: the
# graph no longer keeps those tensors alive. The nodes are still there, but this graph cannot be
# walked again: its nodes need the freed tensors, so a second backward raises (a graph that saved
# nothing could be; 05 retain_graph shows both, and how to keep them).
def after_backward(lab: Lab) -> None:
    """The loss of [2] after loss.backward(): every saved tensor freed"""
    Phi, y, w = trainer_start(lab)
    w.requires_grad_()
    residual = Phi @ w - y
    loss = (residual**2).mean()
    names = {"Phi": Phi, "y": y, "w": w, "residual": residual}
    before = read_graph(loss, names=names)
    loss.backward()
    after = lab.graph(loss, names=names)
    changes = diff(before, after)
    lab.note(changes.text())
    lab.check([(change.name, change.slot, change.before, change.after)
               for change in changes.saved],
              [("PowBackward0", "self", "held", "freed"), ("MmBackward0", "self", "held", "freed")],
              "backward() released both saved tensors once it had used them")
    with lab.expect_error("Trying to backward through the graph a second time",
                          "the saved tensors are gone, so the graph cannot be walked again"):
        loss.backward()


lab.run(after_backward)


# %% The end
TRIES = [
    Try("the saved tensors stay held, so the freed check fails and the second backward works: "
        "the expected error never comes",
        edit=("    loss.backward()\n    after", "    loss.backward(retain_graph=True)\n    after"),
        where=after_backward),
    Try("Φ asks for a gradient too: mm now also keeps w (12 bytes) and Φ gets an AccumulateGrad, "
        "so the node, saved-tensor and byte checks disagree",
        edit=("    w.requires_grad_()\n    residual = Phi @ w - y\n"
              "    loss = (residual**2).mean()\n    graph",
              "    w.requires_grad_()\n    Phi.requires_grad_()\n    residual = Phi @ w - y\n"
              "    loss = (residual**2).mean()\n    graph"),
        where=trainer_loss_graph),
    Try("x * x instead of x**2: mul keeps x twice, once per factor, so the graph checks disagree",
        edit=("y = x**2 + 2 * x", "y = x * x + 2 * x"), where=original_graph),
]
lab.finish(TRIES)

"""02 · scalar engine: reverse-mode autograd written by hand, checked against torch.autograd.

Before PyTorch's autograd, one you can read on a screen. A Value holds a number, the gradient
that flows back into it, the Values it was made from (its parents) and its local derivatives
(how it changes with each parent). backward() applies the chain rule from the output back to the
inputs. It visits the Values in reverse topological order, so that a Value's gradient is complete
before it is passed on, and each Value adds its share into its parents' .grad with +=, so that a
Value used twice collects a share from each use. Each result is checked against torch.autograd
in float64; last, what one backward costs, counted, against finite differences (lesson 01).

The engine computes with plain Python floats, so it runs on the CPU whatever --device says; the
torch side of each comparison runs on the lab's device.

Sources: karpathy/micrograd (micrograd/engine.py, test/test_engine.py), written anew here; its
issues #2 (a re-used Value must collect the share of every use before passing it on) and #53
(a second backward() counted the intermediate gradients of the first one again).
"""

# %% Setup
import math

import torch

from tensor_features.lab import Lab, Try
from tensor_features.lab.graph import read_graph

lab = Lab.start("02 · scalar engine", __doc__, __name__)


# %% The engine: Value
# A Value is one number of a computation. Each op (+, *, ** a number, tanh, exp) computes its
# result and makes a new Value that keeps its parents, the Values it was made from, and a
# function giving its local derivatives, one per parent: for out = a * b they are ∂out/∂a = b
# and ∂out/∂b = a. That is the whole graph: each Value points to its parents, as each of
# torch's grad_fn nodes points to the next ones (lesson 05). The gradients are filled in later,
# by backward(), in the next cell.
class Value:
    """One float, its gradient, and how it was made."""

    def __init__(self, data: float, name: str = "", parents: tuple = (),
                 local_derivatives=lambda: ()):
        self.data = float(data)
        self.grad = 0.0  # d(output)/d(this Value), filled in by backward()
        self.name = name  # an input's name, or the op that made the Value
        self.parents = parents  # the Values it was made from (none for an input)
        self.local_derivatives = local_derivatives  # when called: ∂self/∂parent, per parent

    def __add__(self, other):
        other = other if isinstance(other, Value) else Value(other, str(other))
        return Value(self.data + other.data, "+", (self, other), lambda: (1.0, 1.0))

    def __mul__(self, other):
        other = other if isinstance(other, Value) else Value(other, str(other))
        return Value(self.data * other.data, "*", (self, other),
                     lambda: (other.data, self.data))

    __radd__ = __add__  # 2 + x: Python asks x, and + and * commute
    __rmul__ = __mul__

    def __pow__(self, n: float):  # n is a number kept in the closure, not a Value: no edge
        return Value(self.data**n, f"**{n}", (self,), lambda: (n * self.data ** (n - 1),))

    def tanh(self):
        t = math.tanh(self.data)
        return Value(t, "tanh", (self,), lambda: (1 - t * t,))

    def exp(self):
        e = math.exp(self.data)
        return Value(e, "exp", (self,), lambda: (e,))  # the derivative of exp is exp itself

    def backward(self) -> list["Value"]:
        """y.backward(), as in torch: the backward pass of the next cell, from this Value."""
        return backward(self)

    def __repr__(self) -> str:
        return f"Value({self.name} = {self.data:.6g}, grad {self.grad:.6g})"


# %% The engine: backward()
# backward() puts the Values in topological order, each after the Values it was made from, and
# visits them in reverse: the output first, each Value before the Values it was made from, so
# that when a Value passes its .grad on, every Value that uses it has already sent its share and
# the .grad is complete. A Value's .grad times a local derivative is that parent's share, and it
# is added (+=) into the parent's .grad, because a parent used by several Values gets a share
# from each. An input's .grad keeps what earlier backward() calls added, as in PyTorch.
def topological_order(output: Value) -> list[Value]:
    """output and every Value it was made from, each after its parents."""
    order, placed = [], set()

    def place(node: Value) -> None:
        if node not in placed:  # a Value used twice is placed once
            placed.add(node)
            for parent in node.parents:
                place(parent)
            order.append(node)  # after all of its parents

    place(output)
    return order


def backward(output: Value) -> list[Value]:
    """Add d(output)/dv into v.grad for each Value v it was made from; return them as visited."""
    order = topological_order(output)
    for node in order:
        if node.parents:  # an intermediate Value: its .grad belongs to this backward alone
            node.grad = 0.0
    # d(output)/d(output) = 1: where the chain rule starts. += because the output may be an
    # input itself (x.backward()), whose .grad keeps what earlier calls added.
    output.grad += 1.0
    visited = order[::-1]  # the output first, each Value before the Values it was made from
    for node in visited:
        # node.grad is complete: every Value made from node came earlier and sent its share.
        for parent, local in zip(node.parents, node.local_derivatives()):
            parent.grad += local * node.grad  # the chain rule; += adds the share of each use
    return visited


# %% [1] The original example, on the engine
# y = x**2 + 2x at x = 3, the example lesson 05 runs on torch: the engine gives dy/dx = 2x + 2 =
# 8, as torch.autograd does. x is used twice, by x**2 and by 2 * x, so its .grad collects a share
# from each: 6 + 2. Every number on the way is a small integer, exact in float64, so the engine
# and torch agree exactly. lab.graph(y) draws the engine's graph from the Values themselves
# (their .parents, .name, .data, .grad), each op with its value and grad. It has the shape of
# torch's graph of y_torch: the same ops in the same walk order, x one leaf reached from both
# terms, with grad 8. Where torch has a None edge for the 2, which needs no gradient, the
# engine has an input of its own, the Value 2, with a grad of 3 (= x).
def original_example(lab: Lab) -> None:
    """y = x**2 + 2x at x = 3, on the engine and on torch.autograd"""
    x = Value(3.0, "x")
    y = x**2 + 2 * x
    y.backward()
    x_torch = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    y_torch = x_torch**2 + 2 * x_torch
    y_torch.backward()
    lab.check(y.data, y_torch, "torch's forward: 9 + 6 = 15", rtol=0, atol=0)
    lab.check(x.grad, x_torch.grad, "torch.autograd: 2x + 2 = 8, exactly", rtol=0, atol=0)
    graph = lab.graph(y)  # the engine's Values, read by the lab's graph lens
    torch_graph = read_graph(y_torch)
    lab.check([node.id for node in graph.nodes if node.leaf is None],
              [node.id for node in torch_graph.nodes if node.leaf is None],
              "torch's Add n0, Pow n1, Mul n3: the same ops, in the same walk order")
    lab.check([edge.source for edge in graph.edges() if edge.target == "n2"],
              [edge.source for edge in torch_graph.edges() if edge.target == "n2"],
              "torch's: x is one leaf, n2, reached from both terms")
    lab.check(graph.node("n2").leaf.grad.values, torch_graph.node("n2").leaf.grad.values,
              "torch's leaf x holds 8 too", rtol=0, atol=0)


lab.run(original_example)


# %% [2] A Value used twice: its gradient is a sum, hence +=
# In y = x * x both parents of the * are x. backward() visits the * once and sends a share along
# each of its two edges, ∂y/∂(first factor) = x and ∂y/∂(second factor) = x, both into x.grad:
# 3 + 3 = 2x = 6. With = in place of +=, the second share would overwrite the first (Try 2).
# A second backward() adds 6 more, as PyTorch's does: an input's gradient accumulates until you
# zero it (lesson 05 accumulation). In this engine the intermediate Values start again from 0 on
# each call (Try 4); PyTorch keeps no .grad on intermediates unless asked (retain_grad(), lesson
# 05), and one it keeps accumulates like an input's.
def reused_value(lab: Lab) -> None:
    """y = x * x at x = 3: x.grad collects a share from each use"""
    x = Value(3.0, "x")
    y = x * x
    y.backward()
    x_torch = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    y_torch = x_torch * x_torch
    # retain_graph=True: torch frees what a backward needs once it has run, unless asked to
    # keep it for a second one (lesson 05 retain_graph). The engine keeps everything.
    y_torch.backward(retain_graph=True)
    lab.check(x.grad, x_torch.grad, "torch.autograd: 2x = 6, a share of 3 from each use",
              rtol=0, atol=0)
    y.backward()
    y_torch.backward()
    lab.check(x.grad, x_torch.grad, "torch: a second backward adds 6 more, 12", rtol=0, atol=0)


lab.run(reused_value)


# %% [3] A diamond: why the order is reverse topological
# u = exp(x) feeds two Values, a = tanh(u) and b = u**2, which meet again in y = a + b. u may
# pass its gradient on to x only after both a and b have sent their shares into u.grad. Reverse
# topological order guarantees it: backward() visits y, then b and a, then u, then x (visited
# holds the Values in the order backward() visited them). In an order that reached u before a
# or b, u would pass on only part of its gradient, or none (Try 3).
def diamond(lab: Lab) -> None:
    """y = tanh(u) + u**2 with u = exp(x), at x = 0.5"""
    x = Value(0.5, "x")
    u = x.exp()
    a, b = u.tanh(), u**2
    y = a + b
    visited = y.backward()
    x_torch = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    u_torch = x_torch.exp()
    u_torch.retain_grad()  # torch keeps an intermediate's gradient only when asked (lesson 05)
    y_torch = u_torch.tanh() + u_torch**2
    y_torch.backward()
    lab.check([node.name for node in visited], ["+", "**2", "tanh", "exp", "x"],
              "y first, then both users of u, then u, then x")
    # rtol 1e-12: tanh and exp come from two libraries (Python's math, the platform's C
    # library; torch's kernels), each close to the exact value (they agree to about 1e-16
    # here), and every + and × is correctly rounded in both. 1 − tanh²(u) ≈ 0.14 is a
    # difference of nearly equal numbers, which magnifies tanh's relative error 2·tanh²/(1 −
    # tanh²) ≈ 12.6 times: 1e-12 still allows the libraries to differ by over 300 units in the
    # last place (ulp, 2.2e-16 relative).
    lab.check(u.grad, u_torch.grad, "torch: da/du + db/du = (1 − tanh²u) + 2u, one share per path",
              rtol=1e-12, atol=0)
    lab.check(x.grad, x_torch.grad, "torch: dy/du · du/dx = u.grad · exp(x)", rtol=1e-12, atol=0)


lab.run(diamond)


# %% [4] A neuron: tanh(w·x + b)
# The building block of a neural network, here with three inputs. neuron() uses only +, * and
# .tanh(), which Value and torch.Tensor both have, so the same code runs on either, the same
# operations in the same order. One backward() gives all seven gradients, of w, x and b.
def neuron(w, x, b):
    """tanh(b + w₀x₀ + w₁x₁ + …), for Values or for torch tensors."""
    activation = b
    for w_i, x_i in zip(w, x):
        activation = activation + w_i * x_i
    return activation.tanh()


def one_neuron(lab: Lab) -> None:
    """A neuron tanh(w·x + b) with three inputs, on the engine and on torch.autograd"""
    w = [Value(0.7, "w0"), Value(-1.3, "w1"), Value(0.4, "w2")]
    x = [Value(0.5, "x0"), Value(0.2, "x1"), Value(-0.9, "x2")]
    b = Value(0.1, "b")
    y = neuron(w, x, b)
    y.backward()
    # The same numbers as float64 leaves of torch's graph.
    w_torch = [torch.tensor(v.data, dtype=torch.float64, requires_grad=True) for v in w]
    x_torch = [torch.tensor(v.data, dtype=torch.float64, requires_grad=True) for v in x]
    b_torch = torch.tensor(b.data, dtype=torch.float64, requires_grad=True)
    y_torch = neuron(w_torch, x_torch, b_torch)
    y_torch.backward()
    lab.check(y.data, y_torch, "torch's forward: the same ops, and a tanh within a few ulp",
              rtol=1e-12, atol=0)
    # rtol 1e-12 as in [3]: only tanh and its derivative 1 − y² may differ, by a few ulp.
    lab.check([v.grad for v in w], [t.grad for t in w_torch], "torch: (1 − y²) xᵢ",
              rtol=1e-12, atol=0)
    lab.check([v.grad for v in x], [t.grad for t in x_torch], "torch: (1 − y²) wᵢ",
              rtol=1e-12, atol=0)
    lab.check(b.grad, b_torch.grad, "torch: 1 − y²", rtol=1e-12, atol=0)


lab.run(one_neuron)


# %% [5] What one backward costs, counted
# backward() evaluates one local derivative per edge of the graph: its inner loop runs once for
# each parent of each Value it visits. For the neuron that is 13, two for each * and each + and
# one for the tanh, and they give all 7 gradients at once. Central differences (lesson 01) need
# two evaluations of the whole neuron per number it depends on, 14 for the same 7 gradients,
# each evaluation a forward pass of all 7 ops. One backward's work is one local derivative per
# edge, however many inputs there are; differences need two forward passes per input.
def cost_counted(lab: Lab) -> None:
    """One backward against central differences, on the neuron of [4]"""
    numbers = [0.7, -1.3, 0.4, 0.5, 0.2, -0.9, 0.1]  # w0, w1, w2, x0, x1, x2, b, as in [4]
    inputs = [Value(number) for number in numbers]
    y = neuron(inputs[0:3], inputs[3:6], inputs[6])
    visited = y.backward()
    ops = sum(1 for node in visited if node.parents)
    edges = sum(len(node.parents) for node in visited)
    lab.check(ops, 7, "3 *, 3 +, 1 tanh")
    lab.check(edges, 13, "3 × (2 for a * and 2 for a +) + 1 for the tanh")

    evaluations = 0

    def whole_neuron(values: list[float]) -> float:
        """The neuron's value at these 7 numbers: one forward pass, counted."""
        nonlocal evaluations
        evaluations += 1
        return neuron([Value(v) for v in values[0:3]], [Value(v) for v in values[3:6]],
                      Value(values[6])).data

    h = 1e-6
    by_differences = []
    for i in range(len(numbers)):
        up, down = list(numbers), list(numbers)
        up[i] += h
        down[i] -= h
        by_differences.append((whole_neuron(up) - whole_neuron(down)) / (2 * h))
    lab.check(evaluations, 2 * len(numbers), "two forward passes per input, 7 inputs")
    # Central differences' error: truncation h²·|f‴|/6 < 1e-11 (|f‴| < 10 here); rounding, of f
    # (|f| ≈ 0.17) and of x ± h, a few ulp divided by h, < 1e-9: within 1e-8 on every machine.
    lab.check(by_differences, [v.grad for v in inputs], "the 7 gradients of backward()",
              rtol=0, atol=1e-8)
    lab.note(f"backward: {edges} local derivatives after 1 forward pass of {ops} ops; "
             f"central differences: {evaluations} forward passes of {ops} ops, "
             f"{evaluations * ops} ops")


lab.run(cost_counted)


# %% The end
TRIES = [
    Try("the torch side runs on the GPU, the engine still on Python floats: the same checks "
        "match", flags="--device cuda", needs_cuda=True),
    Try("a Value used twice keeps only the share of its last use: x in [1] and [2] and u in [3] "
        "lose one (and x in [3] with u), so their checks fail; in the neuron no Value is used "
        "twice, and its checks still match",
        edit=("parent.grad += local * node.grad", "parent.grad = local * node.grad"),
        where=backward),
    Try("backward() visits the Values in topological order, inputs first, not reversed: each "
        "passes on its .grad before it has received it, so every gradient that flows through an "
        "intermediate Value is lost: the order check and those gradient checks fail",
        edit=("visited = order[::-1]", "visited = order"), where=backward),
    Try("the intermediate Values keep their .grad from the first backward(): in [2], y.grad is 2 "
        "in the second one, which adds 12 to x.grad, 18 in place of 12: that check fails "
        "(micrograd issue #53)",
        edit=("node.grad = 0.0", "pass"), where=backward),
]
lab.finish(TRIES)

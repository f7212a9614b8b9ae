"""05 · backward: how a scalar's gradient reaches the leaves, and where it does not.

The original example (docs/original-description.ko.md, Autograd Playground §1), then what
backward() does with it: which tensors keep a .grad, the real graph it walks, the chain rule
checked by hand, and two common errors of backward().
"""

# %% Setup
import math
import sys

import torch

from tensor_features.lab import Lab, Try

lab = Lab.start("05 · backward", __doc__, __name__)


# %% [1] The original example
# y = x**2 + 2x is a scalar, so y.backward() needs no argument and fills x.grad with
# dy/dx = 2x + 2: 8 at x = 3.
def original_example(lab: Lab) -> None:
    """The original example: y = x**2 + 2x at x = 3, y.backward()"""
    # From docs/original-description.ko.md (§1), the description this lab started from.
    x = torch.tensor(3.0, requires_grad=True)
    y = x**2 + 2 * x
    # y is a scalar, so backward() needs no argument: it starts from dy/dy = 1.
    y.backward()
    lab.check(x.grad, 8.0, "dy/dx = 2x + 2 = 8 at x = 3")
    lab.check(type(y.grad_fn).__name__, "AddBackward0", "the last op that made y was the +")


lab.run(original_example)


# %% [2] Leaves keep .grad, intermediates do not (unless retain_grad)
# Which tensors keep a .grad: the leaves do; intermediates do not, unless retain_grad() was
# called on them.
def leaf_and_non_leaf(lab: Lab) -> None:
    """Leaves keep .grad; an intermediate keeps it only after retain_grad()"""
    x = torch.tensor(3.0, requires_grad=True)
    h = x**2
    h.retain_grad()  # ask autograd to keep the gradient that flows through h
    u = x**2  # the same value, without retain_grad()
    y = h + u + 2 * x
    y.backward()
    lab.check((x.is_leaf, h.is_leaf, u.is_leaf), (True, False, False),
              "x was made by the user; h and u were made by an op")
    lab.check(h.grad, 1.0, "dy/dh = 1, kept because of retain_grad()")
    with lab.expect_warning("is not a leaf Tensor",
                            "reading .grad of a non-leaf warns, then gives None"):
        u_grad = u.grad
    lab.check(u_grad, None, "autograd used dy/du on the way to x, then dropped it")
    lab.check(x.grad, 14.0, "dy/dx = 2x + 2x + 2 = 14 at x = 3")


lab.run(leaf_and_non_leaf)


# %% [3] The real graph behind y
# The real graph that backward() walks, printed from grad_fn.next_functions, with
# AccumulateGrad at the leaves, a None edge for an input that needs no gradient (the 2 of
# 2 * x) and no edge at all for an argument that is not an input (the 2 of x**2).
def graph_lines(grad_fn, depth: int = 0) -> list[str]:
    """Walk grad_fn.next_functions from the output down to the leaves, one line per node."""
    if grad_fn is None:
        return ["  " * depth + "None"]  # an input that needs no gradient
    name = type(grad_fn).__name__
    if hasattr(grad_fn, "variable"):  # AccumulateGrad: the node that adds into leaf.grad
        name += f" -> leaf of shape {tuple(grad_fn.variable.shape)}"
    lines = ["  " * depth + name]
    for next_fn, _input_index in grad_fn.next_functions:
        lines += graph_lines(next_fn, depth + 1)
    return lines


def real_graph(lab: Lab) -> None:
    """The graph backward() walks, read from y.grad_fn.next_functions"""
    x = torch.tensor(3.0, requires_grad=True)
    y = x**2 + 2 * x  # its graph is printed below
    lines = graph_lines(y.grad_fn)
    lab.note("\n".join(lines))
    # The same graph through the lab's graph lens, with what each node saved for backward: a
    # picture in a notebook, or with --graphs DIR.
    lab.graph(y, names={"x": x, "y": y})
    names = [line.strip().split(" ")[0] for line in lines]
    lab.check(names, ["AddBackward0", "PowBackward0", "AccumulateGrad",
                      "MulBackward0", "AccumulateGrad", "None"],
              "Add(Pow(x), Mul(x, 2)): x is reached once per term")
    power, product = (node for node, _input_index in y.grad_fn.next_functions)
    lab.check((len(power.next_functions), power._saved_exponent), (1, 2),
              "pow has one input, x; the 2 of x**2 is an argument, a number kept in the node: "
              "no edge")
    lab.check(len(product.next_functions), 2,
              "mul has two inputs, x and the 2 of 2 * x; that 2 needs no gradient: the None edge")


lab.run(real_graph)


# %% [4] The chain rule, by hand
# The chain rule, checked by hand: for y = u(x)**3, dy/dx = dy/du · du/dx.
def chain_rule(lab: Lab) -> None:
    """The chain rule: y = sin(x)**3 at x = 0.5"""
    x = torch.tensor(0.5, requires_grad=True)
    u = torch.sin(x)
    y = u**3
    y.backward()
    # dy/dx = dy/du · du/dx = 3 sin(x)² · cos(x): backward() multiplies these node by node.
    lab.check(x.grad, 3 * math.sin(0.5) ** 2 * math.cos(0.5), "3 sin(x)² cos(x) at x = 0.5")


lab.run(chain_rule)


# %% [5] backward() on a vector output
# The first of two common errors of backward(): called with no argument on a vector output.
def non_scalar_backward(lab: Lab) -> None:
    """backward() on a vector output"""
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    with lab.expect_error("grad can be implicitly created only for scalar outputs",
                          "a vector output has a Jacobian, not one gradient: "
                          "pass y.backward(v) (05 vjp)"):
        y.backward()


lab.run(non_scalar_backward)


# %% [6] backward() on something that needs no gradient
# The second: backward() on a result that no input asked a gradient for, so that no graph
# was recorded.
def no_grad_backward(lab: Lab) -> None:
    """backward() when no input requires grad"""
    x = torch.tensor(3.0)  # requires_grad defaults to False
    y = x**2
    lab.check((y.requires_grad, y.grad_fn), (False, None),
              "no input asked for a gradient, so no graph was recorded")
    with lab.expect_error("element 0 of tensors does not require grad",
                          "there is no graph to walk back"):
        y.backward()


lab.run(no_grad_backward)


# %% The end
TRIES = [
    Try("the same values; the graph's leaves now hold CUDA tensors",
        flags="--device cuda", needs_cuda=True),
    Try("h.grad stays None, so its check fails",
        edit=("h.retain_grad()", ""), where=leaf_and_non_leaf),
    Try("the 2 of 2 * x now needs a gradient: its None edge becomes a second AccumulateGrad, "
        "so the graph check disagrees",
        edit=("y = x**2 + 2 * x", "y = x**2 + torch.tensor(2.0, requires_grad=True) * x"),
        where=real_graph),
]
lab.finish(TRIES)

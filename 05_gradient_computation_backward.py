"""05 · backward: how a scalar's gradient reaches the leaves, and where it does not.

Shows the seed's example (d/dx of x**2 + 2x at x = 3 is 8), which tensors keep a .grad
(leaves) and which do not (intermediates, unless retain_grad()), the real graph that
backward() walks (printed from grad_fn.next_functions, AccumulateGrad at the leaves and
None edges for inputs that need no gradient), the chain rule checked by hand, and the two
errors backward() raises most often.
"""

# %% Setup
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # find tensor_features when run from elsewhere

import torch

from tensor_features.lab import Lab


# %% [1] The seed's example
def seed_example(lab: Lab) -> torch.Tensor:
    lab.show("x = torch.tensor(3.0, requires_grad=True); y = x**2 + 2*x; y.backward()")
    x = torch.tensor(3.0, requires_grad=True, device=lab.device)
    y = x**2 + 2 * x
    # A scalar output needs no seed gradient: backward() starts from dy/dy = 1.
    y.backward()
    lab.check("x.grad", x.grad, 2 * 3 + 2, "dy/dx = 2x + 2 = 8")
    lab.check("y.grad_fn", type(y.grad_fn).__name__, "AddBackward0", "the last op made y")
    return x.grad


# %% [2] Leaves keep .grad, intermediates do not (unless retain_grad)
def leaf_and_non_leaf(lab: Lab) -> dict:
    lab.show("x = torch.tensor(3.0, requires_grad=True); h = x**2; h.retain_grad(); u = x**2\n"
             "y = h + u + 2*x; y.backward()")
    x = torch.tensor(3.0, requires_grad=True, device=lab.device)
    h = x**2
    h.retain_grad()  # ask autograd to keep the gradient that passes through h
    u = x**2  # same value, no retain_grad: its gradient is used and dropped
    y = h + u + 2 * x
    y.backward()
    lab.check("x.is_leaf, h.is_leaf", (x.is_leaf, h.is_leaf), (True, False),
              "x was made by the user, h by an op")
    lab.check("h.grad", h.grad, 1.0, "dy/dh = 1; kept because of retain_grad()")
    with lab.expect_warning("is not a leaf Tensor", "reading .grad of a non-leaf"):
        u_grad = u.grad
    lab.check("u.grad", u_grad, None, "only leaves (and retain_grad tensors) store .grad")
    lab.check("x.grad", x.grad, 4 * 3 + 2, "dy/dx = 2x + 2x + 2 = 14")
    return {"x.grad": x.grad, "h.grad": h.grad, "u.grad": u_grad}


# %% [3] The real graph behind y
def graph_lines(grad_fn, depth: int = 0) -> list[str]:
    """Walk grad_fn.next_functions from the output down to the leaves, one line per node."""
    if grad_fn is None:
        # An input that needs no gradient (a constant, a tensor without requires_grad).
        return ["  " * depth + "None"]
    name = type(grad_fn).__name__
    if hasattr(grad_fn, "variable"):  # AccumulateGrad: the node that writes leaf.grad
        leaf = grad_fn.variable
        name += f" -> leaf of shape {tuple(leaf.shape)}, .grad += incoming"
    lines = ["  " * depth + name]
    for next_fn, _input_index in grad_fn.next_functions:
        lines += graph_lines(next_fn, depth + 1)
    return lines


def real_graph(lab: Lab) -> list[str]:
    lab.show("x = torch.tensor(3.0, requires_grad=True); y = x**2 + 2*x; walk y.grad_fn")
    x = torch.tensor(3.0, requires_grad=True, device=lab.device)
    y = x**2 + 2 * x
    lines = graph_lines(y.grad_fn)
    lab.note("\n".join(lines))
    accumulate = sum("AccumulateGrad" in line for line in lines)
    lab.check("AccumulateGrad nodes", accumulate, 2, "x is used twice, once per term")
    lab.check("None edges", sum(line.strip() == "None" for line in lines), 1,
              "the constant 2 in 2*x needs no gradient")
    return lines


# %% [4] The chain rule, by hand
def chain_rule(lab: Lab) -> torch.Tensor:
    lab.show("x = 0.5; u = sin(x); y = u**3; y.backward()")
    x = torch.tensor(0.5, requires_grad=True, device=lab.device)
    u = torch.sin(x)
    y = u**3
    y.backward()
    # dy/dx = dy/du * du/dx = 3 sin(x)^2 * cos(x): the product backward() builds node by node.
    by_hand = 3 * torch.sin(x.detach()) ** 2 * torch.cos(x.detach())
    lab.check("x.grad", x.grad, by_hand, "3 sin(x)^2 cos(x), chain rule")
    return x.grad


# %% [5] backward() on a vector output
def non_scalar_backward(lab: Lab) -> BaseException | None:
    lab.show("x = torch.tensor([1., 2.], requires_grad=True); (x * 2).backward()")
    x = torch.tensor([1.0, 2.0], requires_grad=True, device=lab.device)
    y = x * 2
    # A vector output has a Jacobian, not a gradient: backward needs the vector v of v^T J.
    with lab.expect_error("grad can be implicitly created only for scalar outputs",
                          "pass y.backward(v) or reduce to a scalar (05 vjp)") as caught:
        y.backward()
    return caught.error


# %% [6] backward() on something that needs no gradient
def no_grad_backward(lab: Lab) -> BaseException | None:
    lab.show("x = torch.tensor(3.0); (x**2).backward()")
    x = torch.tensor(3.0, device=lab.device)  # requires_grad defaults to False
    y = x**2
    lab.check("y.requires_grad, y.grad_fn", (y.requires_grad, y.grad_fn), (False, None),
              "no input asked for a gradient, so no graph")
    with lab.expect_error("element 0 of tensors does not require grad",
                          "there is no graph to walk back") as caught:
        y.backward()
    return caught.error


# %% Run
def main(argv: list[str] | None = None) -> int:
    lab = Lab.from_argv("05 · backward", __doc__, argv)
    seed_example(lab)
    leaf_and_non_leaf(lab)
    real_graph(lab)
    chain_rule(lab)
    non_scalar_backward(lab)
    no_grad_backward(lab)
    return lab.finish([
        "--device cuda (same numbers; AccumulateGrad writes into CUDA memory)",
        "in [2], delete h.retain_grad() and h.grad becomes None with the same warning",
        "in [3], make the constant a tensor with requires_grad=True: the None edge becomes AccumulateGrad",
    ])


if __name__ == "__main__":
    sys.exit(main())

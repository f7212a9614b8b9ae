"""05 · retain_graph: when a graph may be walked twice, and what happens to .grad if it is.

backward() frees the tensors a graph saved for its backward pass, so a second walk fails
unless the first one said retain_graph=True. The seed's loop keeps the graph and prints
12 then 24: the gradient is not recomputed "fresh", it accumulates. A graph that saved
nothing can be walked twice with no error at all, silently doubling .grad. And
create_graph=True makes the gradient itself differentiable: a second derivative.
"""

# %% Setup
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # find tensor_features when run from elsewhere

import torch

from tensor_features.lab import Lab


# %% [1] The seed's loop: 12, then 24
def seed_loop(lab: Lab) -> list[float]:
    lab.show("x = 2; y = x**3\nfor _ in range(2): y.backward(retain_graph=True); print(x.grad)")
    x = torch.tensor(2.0, requires_grad=True, device=lab.device)
    y = x**3
    printed = []
    for call in range(1, 3):
        y.backward(retain_graph=True)  # keep PowBackward0's saved x for the next call
        printed.append(x.grad.item())
        lab.check(f"call {call}: x.grad", x.grad, call * 3 * 2**2,
                  f"{call} x 3x^2 = {call * 12}: retain_graph keeps the graph, .grad still adds")
    return printed


# %% [2] The same loop without retain_graph
def without_retain_graph(lab: Lab) -> dict:
    lab.show("y = x**3; y.backward(); y.backward()")
    x = torch.tensor(2.0, requires_grad=True, device=lab.device)
    y = x**3
    y.backward()  # frees the x that PowBackward0 saved to compute 3x^2
    with lab.expect_error("Trying to backward through the graph a second time",
                          "x**3 saved x; the first backward freed it") as caught:
        y.backward()
    lab.check("x.grad", x.grad, 12.0, "only the first call got through")
    return {"grad": x.grad, "error": caught.error}


# %% [3] The pitfall: a graph with nothing saved runs twice, silently
def nothing_saved(lab: Lab) -> tuple[torch.Tensor, torch.Tensor]:
    lab.show("y = x + 1; y.backward(); y.backward()      # and s = v.sum(); twice")
    x = torch.tensor(2.0, requires_grad=True, device=lab.device)
    y = x + 1
    # AddBackward0 needs no saved tensor (d/dx (x + 1) = 1), so nothing is freed and nothing fails.
    y.backward()
    y.backward()
    lab.check("x.grad", x.grad, 2.0, "1 + 1: no error, and the gradient is doubled")
    v = torch.tensor([1.0, 2.0, 3.0], requires_grad=True, device=lab.device)
    s = v.sum()
    s.backward()
    s.backward()  # SumBackward0 only remembers a shape, not a tensor
    lab.check("v.grad", v.grad, [2.0, 2.0, 2.0], "ones + ones, silently")
    lab.note("No error is not proof of correctness: an error in [2] is the lucky case.")
    return x.grad, v.grad


# %% [4] create_graph=True: differentiate the derivative
def second_derivative(lab: Lab) -> tuple[torch.Tensor, torch.Tensor]:
    lab.show("y = x**3; (dy,) = torch.autograd.grad(y, x, create_graph=True); (d2y,) = torch.autograd.grad(dy, x)")
    x = torch.tensor(2.0, requires_grad=True, device=lab.device)
    y = x**3
    # create_graph=True records the backward pass itself, so dy has a grad_fn of its own.
    (dy,) = torch.autograd.grad(y, x, create_graph=True)
    lab.check("dy", dy, 3 * 2.0**2, "3x^2 = 12")
    lab.check("dy.requires_grad", dy.requires_grad, True, "the derivative is part of a graph")
    (d2y,) = torch.autograd.grad(dy, x)
    lab.check("d2y", d2y, 6 * 2.0, "d²/dx² x³ = 6x = 12")
    lab.check("x.grad", x.grad, None, "autograd.grad returns gradients; it does not touch .grad")
    return dy, d2y


# %% Run
def main(argv: list[str] | None = None) -> int:
    lab = Lab.from_argv("05 · retain_graph", __doc__, argv)
    seed_loop(lab)
    without_retain_graph(lab)
    nothing_saved(lab)
    second_derivative(lab)
    return lab.finish([
        "--device cuda",
        "in [1], add x.grad.zero_() inside the loop: both calls print 12",
        "in [3], use y = x * x instead of x + 1: the second backward raises",
        "in [4], drop create_graph=True: the second grad raises (dy has no grad_fn)",
    ])


if __name__ == "__main__":
    sys.exit(main())

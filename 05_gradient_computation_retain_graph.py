"""05 · retain_graph: what backward() frees, when a graph can be walked twice, what .grad does.

The original loop (docs/original-description.ko.md, Autograd Playground §3) walks one graph
twice; then what backward() frees without retain_graph, a graph that saved no tensor, and
create_graph=True.
"""

# %% Setup
import torch

from tensor_features.lab import Lab, Try

lab = Lab.start("05 · retain_graph", __doc__, __name__)


# %% [1] The original loop: 12, then 24
# The original loop calls y.backward(retain_graph=True) twice on y = x**3 and prints 12, then
# 24: keeping the graph does not make the gradient start afresh, it still adds up. The graph
# read after both calls shows why a third call would work too: PowBackward0 still holds x itself,
# the one tensor it saved, and x's leaf carries the 24.
def original_loop(lab: Lab) -> None:
    """The original loop: y = x**3 at x = 2, backward twice, keeping the graph"""
    # From docs/original-description.ko.md (§3), the description this lab started from.
    x = torch.tensor(2.0, requires_grad=True)
    y = x**3
    for call in range(1, 3):
        y.backward(retain_graph=True)  # keep what y's graph saved, for the next call
        lab.check(x.grad, call * 3 * 2.0**2,
                  "3x² at x = 2, into an empty .grad; the graph is kept for the next call"
                  if call == 1 else
                  f"{call} × 3x²: the kept graph was walked again, "
                  "and .grad added to what it held",
                  label=f"call {call}: x.grad")
    graph = lab.graph(y, names={"x": x, "y": y})
    lab.check([(saved.slot, saved.state, saved.tensor.name) for saved in graph.nodes[0].saved],
              [("self", "held", "x")],
              "retain_graph=True freed nothing: after two walks pow still holds x itself")


lab.run(original_loop)


# %% [2] What backward() frees
# Without retain_graph the second call raises, because the first one released what y's graph
# saved, its reference to x (x itself is untouched). The graph read just after backward() shows
# the same node as in [1], its saved x now marked freed: the node is still there, what it kept is
# not.
def what_backward_frees(lab: Lab) -> None:
    """y = x**3: what its graph saved, and what is left after y.backward()"""
    x = torch.tensor(2.0, requires_grad=True)
    y = x**3
    # Attributes named _saved_* show what a node saved
    # (docs/source/notes/autograd.md, "Saved tensors").
    lab.check(y.grad_fn._saved_self is x, True,
              "PowBackward0 saved x itself, to compute 3x² later")
    y.backward(retain_graph=False)  # the default (docs: Tensor.backward): free what the graph saved
    lab.check(x.grad, 12.0, "3x² at x = 2")
    graph = lab.graph(y, names={"x": x, "y": y})
    lab.check([(saved.slot, saved.state) for saved in graph.nodes[0].saved], [("self", "freed")],
              "backward() released pow's reference to x as soon as it had used it")
    with lab.expect_error("after they have already been freed",
                          "the backward released the node's reference to x: "
                          "it cannot read x any more"):
        y.grad_fn._saved_self
    lab.check(x, 2.0, "x itself is untouched: only the graph's saved reference is gone")
    with lab.expect_error("Trying to backward through the graph a second time",
                          "a second walk needs the saved x, which the graph no longer holds; "
                          "retain_graph=True on the first call keeps it"):
        y.backward()
    lab.check(x.grad, 12.0, "only the first call got through")


lab.run(what_backward_frees)


# %% [3] The pitfall: a graph that saved nothing runs twice, silently
# A graph that saved no tensor can be walked twice with no error at all, silently doubling
# .grad.
def saved_tensor_names(node) -> list[str]:
    """The _saved_* attributes of a backward node that hold a tensor (read before it is freed)."""
    return [name for name in dir(node)
            if name.startswith("_saved_") and isinstance(getattr(node, name), torch.Tensor)]


def nothing_saved(lab: Lab) -> None:
    """y = x + 1 and s = v.sum(): nothing saved, so a second backward() goes through"""
    x = torch.tensor(2.0, requires_grad=True)
    y = x + 1
    add_saved = saved_tensor_names(y.grad_fn)
    lab.check(add_saved, [], "d/dx (x + 1) = 1 needs no tensor from the forward pass")
    y.backward()
    y.backward()  # no error: no saved tensor to free
    lab.check(x.grad, 2.0, "1 + 1: no error, and the gradient is doubled")
    v = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    s = v.sum()
    sum_saved = saved_tensor_names(s.grad_fn)
    lab.check((sum_saved, list(s.grad_fn._saved_self_sym_sizes)), ([], [3]),
              "SumBackward0 keeps v's shape, no tensor")
    s.backward()
    s.backward()
    lab.check(v.grad, [2.0, 2.0, 2.0], "ones + ones, silently")
    pow_saved = saved_tensor_names((x**3).grad_fn)
    lab.check(pow_saved, ["_saved_self"], "x**3 does save a tensor: that is why [2] raised")


lab.run(nothing_saved)


# %% [4] create_graph=True: differentiate the derivative
# create_graph=True records the backward pass itself, so the derivative can be differentiated
# again.
def second_derivative(lab: Lab) -> None:
    """y = x**3 at x = 2: autograd.grad with and without create_graph=True"""
    x = torch.tensor(2.0, requires_grad=True)
    y = x**3
    (plain,) = torch.autograd.grad(y, x)  # a tensor with no graph behind it
    lab.check((plain, plain.requires_grad), (12.0, False), "3x² = 12, recorded nowhere")
    with lab.expect_error("element 0 of tensors does not require grad",
                          "plain has no grad_fn, so there is nothing to differentiate"):
        torch.autograd.grad(plain, x)
    y = x**3
    # create_graph=True records the backward pass itself, so dy has a grad_fn of its own.
    (dy,) = torch.autograd.grad(y, x, create_graph=True)
    lab.check((dy, dy.grad_fn is not None), (12.0, True),
              "3x² = 12, with a grad_fn: part of a graph")
    (d2y,) = torch.autograd.grad(dy, x)
    lab.check(d2y, 12.0, "d²/dx² x³ = 6x = 12 at x = 2")
    lab.check(x.grad, None, "autograd.grad returns gradients; it leaves .grad alone")
    # retain_graph defaults to create_graph (docs: torch.autograd.grad), so y's graph is still
    # there.
    y.backward()
    lab.check(x.grad, 12.0, "y's graph survived the create_graph=True call")


lab.run(second_derivative)


# %% The end
TRIES = [
    Try("the same values; the tensors live on the GPU", flags="--device cuda", needs_cuda=True),
    Try(".grad starts from None before each call, so both calls give 12 and the check of call 2 "
        "fails",
        edit=("y.backward(retain_graph=True)  #",
              "x.grad = None; y.backward(retain_graph=True)  #"),
        where=original_loop),
    Try("the graph keeps its reference to x: reading it and the second backward both work, so the "
        "checks that expected an error disagree, and so does the last: x.grad ends at 24",
        edit=("y.backward(retain_graph=False)", "y.backward(retain_graph=True)"),
        where=what_backward_frees),
]
lab.finish(TRIES)

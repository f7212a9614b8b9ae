"""06 · hooks: run your own code on gradients as backward computes them.

Tensor hooks, a post-accumulate-grad hook, and Node hooks on a grad_fn, with the order in which
they fire set against the autograd notes; last, register_multi_grad_hook and a module's full
backward hook.
"""

# %% Setup
import torch

from tensor_features.lab import Lab, Try

lab = Lab.start("06 · hooks", __doc__, __name__)


# %% [1] A tensor hook
# A tensor hook sees (and may replace) the gradient of one tensor.
def tensor_hook(lab: Lab) -> None:
    """A tensor hook that returns grad * 10, on an x used three times"""
    x = torch.tensor(2.0, requires_grad=True)
    seen = []
    # A hook that returns None leaves the gradient as it is; one that returns a tensor replaces it
    # (torch/_tensor.py, Tensor.register_hook). Hooks on one tensor run in the order registered
    # (docs/source/notes/autograd.md).
    x.register_hook(lambda grad: seen.append(grad.item()))  # returns None
    x.register_hook(lambda grad: grad * 10)  # returns a tensor
    y = x * x * x  # x is used three times
    y.backward()
    lab.check(seen, [12.0], "one call, with the three uses summed: 3x² = 12")
    lab.check(x.grad, 120.0, "3x² · 10: what the second hook returned is what reached x.grad")


lab.run(tensor_hook)


# %% [2] handle.remove()
# register_hook returns a handle; handle.remove() takes the hook off.
def remove_hook(lab: Lab) -> None:
    """handle.remove() takes a hook off"""
    x = torch.tensor(2.0, requires_grad=True)
    handle = x.register_hook(lambda grad: grad * 10)
    (x * x * x).backward()
    lab.check(x.grad, 120.0, "the hook scaled 3x² = 12 by 10")
    handle.remove()
    x.grad = None
    (x * x * x).backward()
    lab.check(x.grad, 12.0, "after remove(), the plain 3x²")


lab.run(remove_hook)


# %% [3] A hook on a tensor that needs no gradient
# A tensor that does not require grad has no gradient to hook: registering a hook on it raises.
def hook_without_grad(lab: Lab) -> None:
    """A hook on a tensor that does not require grad"""
    c = torch.tensor(2.0)  # requires_grad=False: backward computes no gradient for c
    with lab.expect_error("cannot register a hook on a tensor that doesn't require gradient",
                          "there is no gradient of c to hook"):
        c.register_hook(lambda grad: grad * 10)


lab.run(hook_without_grad)


# %% [4] A post-accumulate-grad hook
# A post-accumulate-grad hook sees a leaf after its .grad was updated.
def post_accumulate_grad_hook(lab: Lab) -> None:
    """
    register_post_accumulate_grad_hook sees .grad once accumulated; register_hook sees what arrives
    """
    p = torch.tensor(1.0, requires_grad=True)
    arriving, accumulated = [], []
    p.register_hook(lambda grad: arriving.append(grad.item()))
    # This hook is called with the leaf p itself, not a gradient (torch/_tensor.py).
    p.register_post_accumulate_grad_hook(lambda param: accumulated.append(param.grad.item()))
    (p * 5).backward()
    (p * 5).backward()  # no zero_(): .grad accumulates
    lab.check(arriving, [5.0, 5.0], "each backward brings d(5p)/dp = 5")
    lab.check(accumulated, [5.0, 10.0], "p.grad after each backward: 5, then 5 + 5")


lab.run(post_accumulate_grad_hook)


# %% [5] The order the hooks fire in
# Node pre-hooks and post-hooks sit on a grad_fn. The order in which these and the tensor hooks
# fire is recorded here and set against the autograd notes ("Backward Hooks execution",
# docs/source/notes/autograd.md).
def hook_order(lab: Lab) -> None:
    """Tensor hooks, retain_grad, Node pre-hooks, post-hooks: who runs first, and what each sees"""
    x = torch.tensor(1.0, requires_grad=True)
    t = x * 2  # t.grad_fn is MulBackward0: the Node whose hooks we register
    events = []

    def record(who, grad):
        events.append((who, grad.item(), None if t.grad is None else t.grad.item()))

    # Registered here in the reverse of the order they fire in: the Node post-hook, the Node
    # pre-hooks, the tensor hooks. retain_grad, registered last, fires right after the tensor
    # hooks, wherever it is registered (tests/lessons/test_06_hooks.py registers it first).
    # Within a kind, hooks fire in the order registered (docs/source/notes/autograd.md,
    # "Backward Hooks execution").
    t.grad_fn.register_hook(
        lambda grad_inputs, grad_outputs: record("Node post-hook", grad_inputs[0]))
    t.grad_fn.register_prehook(lambda grad_outputs: record("Node pre-hook", grad_outputs[0]))
    # This pre-hook runs after the recording one:
    t.grad_fn.register_prehook(lambda grad_outputs: (grad_outputs[0] * 100,))
    t.register_hook(lambda grad: grad * 10)
    t.register_hook(lambda grad: record("tensor hook", grad))  # after the ×10 tensor hook
    t.retain_grad()
    (t * 3).backward()
    t_grad = t.grad  # without retain_grad, reading .grad of a non-leaf warns and gives None
    lab.note("each event: (who, the gradient it sees, t.grad at that moment)")
    lab.check(events, [("tensor hook", 30.0, None), ("Node pre-hook", 30.0, 30.0),
                       ("Node post-hook", 6000.0, 30.0)],
              "3 ×10 = 30 reaches the pre-hook; after its ×100, MulBackward0 gives "
              "3000 · 2 = 6000")
    # The notes list (steps 1-4 and 6; step 5, post-accumulate-grad hooks, is for leaves only):
    # tensor hooks, Node pre-hooks, retain_grad's .grad, the Node, post-hooks. Here t.grad
    # is already 30 when the pre-hook runs, and the pre-hook's ×100 never reaches it: the engine
    # runs retain_grad with the tensor hooks, last among them, before Node pre-hooks
    # (call_function in torch/csrc/autograd/engine.cpp; pytorch/pytorch#85849).
    lab.check(t_grad, 30.0,
              "retain_grad kept the gradient after the tensor hooks, before the Node pre-hook")
    lab.check(x.grad, 6000.0, "the pre-hook's ×100 did reach the Node, and through it x")


lab.run(hook_order)


# %% [6] register_multi_grad_hook
# register_multi_grad_hook: one call per backward that reaches any of several tensors, once their
# gradients are ready.
def multi_grad_hook(lab: Lab) -> None:
    """
    register_multi_grad_hook: one call per backward that reaches a or b, with the gradients computed
    """
    a = torch.tensor(1.0, requires_grad=True)
    b = torch.tensor(2.0, requires_grad=True)
    c = torch.tensor(3.0, requires_grad=True)
    present = []
    torch.autograd.graph.register_multi_grad_hook(
        (a, b), lambda grads: present.append([g is not None for g in grads]))
    (c * 3).backward()  # neither a nor b is in this graph
    (a * 3).backward()  # b is not in this graph
    (a * b).backward()
    # mode="all" (the default) ignores a tensor that is not part of the graph and passes None for
    # it (torch/autograd/graph.py, register_multi_grad_hook).
    lab.check(present, [[True, False], [True, True]],
              "three backwards, two calls: none for c * 3, then only a's gradient, then both")


lab.run(multi_grad_hook)


# %% [7] A module's full backward hook
# A module's full backward hook gets the gradients with respect to the module's inputs and
# outputs.
def module_backward_hooks(lab: Lab) -> None:
    """register_full_backward_hook on each layer of a small nn.Sequential"""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    calls = []
    for name, layer in net.named_children():
        layer.register_full_backward_hook(
            lambda module, grad_input, grad_output, name=name:
                calls.append((name, grad_input, grad_output)))
    x = torch.randn(5, 4, requires_grad=True)
    net(x).sum().backward()
    shapes = [(name, [None if g is None else tuple(g.shape) for g in grad_input],
               [tuple(g.shape) for g in grad_output])
              for name, grad_input, grad_output in calls]
    # grad_input holds the gradients with respect to the layer's inputs, not its weights
    # (torch/nn/modules/module.py, register_full_backward_hook).
    lab.check(shapes,
              [("2", [(5, 3)], [(5, 2)]), ("1", [(5, 3)], [(5, 3)]), ("0", [(5, 4)], [(5, 3)])],
              "last layer first; Linear(4, 3) on 5 rows: grad_input 5×4, grad_output 5×3")


lab.run(module_backward_hooks)


# %% The end
TRIES = [
    Try("the same values, computed on the GPU", flags="--device cuda", needs_cuda=True),
    Try("no retain_grad: t.grad stays None in every event, and PyTorch warns (on stderr) at each "
        "line that reads t.grad; the checks of events and t_grad fail",
        edit=("    t.retain_grad()\n", ""), where=hook_order),
    Try("the first Linear's input needs no gradient: its grad_input is (None,), PyTorch warns, "
        "and the check of shapes fails",
        edit=("x = torch.randn(5, 4, requires_grad=True)", "x = torch.randn(5, 4)"),
        where=module_backward_hooks),
]
lab.finish(TRIES)

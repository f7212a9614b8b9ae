"""06 hooks: the values every hook saw, against oracles written here: analytic derivatives of
x³, 5p and (2x)·3, hook orders derived by hand from the autograd notes ("Backward Hooks
execution", docs/source/notes/autograd.rst) and, for retain_grad, from the engine
(torch/csrc/autograd/engine.cpp, call_function), and module gradients from the layer shapes. The
values are those the lesson's checks saw (and the locals its observations left). TRY_PROMISES: what
each of the lesson's Try lines does (tests/lab/test_tries.py)."""

import pytest
import torch

from tests.support import Promise, assert_caught, load_lesson

lesson = load_lesson("06_extending_autograd_hooks.py")

# The lesson's Try lines, in order: the exit code and the text each adds to the output.
TRY_PROMISES = [
    Promise(shows=("device cuda",)),
    Promise(exit=1, shows=("FAIL  events = [(tensor hook, 30.0, None), (Node pre-hook, 30.0, None)", "FAIL  t_grad = None")),
    Promise(exit=1, shows=("(0, [None], [(5, 3)])",)),
]

MUTANTS = [
    ("06_extending_autograd_hooks.py", "x.register_hook(lambda grad: grad * 10)  # returns a tensor",
     "x.register_hook(lambda grad: grad * 1)  # returns a tensor"),
    ("06_extending_autograd_hooks.py", "    handle.remove()\n", "    pass\n"),
    ("06_extending_autograd_hooks.py", "    (p * 5).backward()  # no zero_()", "    p.grad = None\n    (p * 5).backward()  # no zero_()"),
    ("06_extending_autograd_hooks.py", "    t.retain_grad()\n    (t * 3).backward()", "    (t * 3).backward()"),
    ("06_extending_autograd_hooks.py",
     "    t.register_hook(lambda grad: grad * 10)\n    t.register_hook(lambda grad: record(\"tensor hook\", grad))",
     "    t.register_hook(lambda grad: record(\"tensor hook\", grad))\n    t.register_hook(lambda grad: grad * 10)"),
    ("06_extending_autograd_hooks.py", "(grad_outputs[0] * 100,)", "(grad_outputs[0] * 10,)"),
    ("06_extending_autograd_hooks.py", "(a * 3).backward()  # b is not", "(a * b).backward()  # b is not"),
    ("06_extending_autograd_hooks.py", "(c * 3).backward()  # neither", "(c * a).backward()  # neither"),
    ("06_extending_autograd_hooks.py", "    t_grad = t.grad  #", "    t_grad = x.grad  #"),
    ("06_extending_autograd_hooks.py", "torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)",
     "torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 3)"),
]

# Written by a tester who had not read these tests, from the lessons and the package alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # ---------------------------------------------------------------- 06 hooks
    # tensor_hook(): hooks registered in the other order: seen = [120] not [12]
    ('06_extending_autograd_hooks.py', '    x.register_hook(lambda grad: seen.append(grad.item()))  # returns None\n    x.register_hook(lambda grad: grad * 10)  # returns a tensor\n', '    x.register_hook(lambda grad: grad * 10)  # returns a tensor\n    x.register_hook(lambda grad: seen.append(grad.item()))  # returns None\n'),
    # hook_order(): the ×10 hook on x instead of t: events see 3, t.grad = 3, yet x.grad stays 6000
    ('06_extending_autograd_hooks.py', '    t.register_hook(lambda grad: grad * 10)\n', '    x.register_hook(lambda grad: grad * 10)\n'),
    # post_accumulate_grad_hook(): a plain tensor hook where the post-accumulate hook was named: accumulated = [5, 5]
    ('06_extending_autograd_hooks.py', 'p.register_post_accumulate_grad_hook(lambda param: accumulated.append(param.grad.item()))', 'p.register_hook(lambda grad: accumulated.append(grad.item()))'),
    # remove_hook(): handle.remove() forgotten: x.grad = 120 after the second backward
    ('06_extending_autograd_hooks.py', '    handle.remove()\n    x.grad = None\n', '    x.grad = None\n'),
]


def test_tensor_hook_fires_once_and_replaces_the_gradient(lab):
    made = lab.run(lesson.tensor_hook)
    x = 2.0
    assert made["seen"] == [3 * x**2]  # d(x³)/dx, one call for the three uses
    assert made["x.grad"].item() == 10 * 3 * x**2


def test_remove_hook(lab):
    made = lab.run(lesson.remove_hook)
    # d(x³)/dx = 3x² at x = 2, scaled by the hook's 10, then, after remove(), plain.
    assert [g.item() for g in made.every("x.grad")] == [10 * 3 * 2.0**2, 3 * 2.0**2]


def test_hook_on_a_tensor_without_grad(lab):
    assert_caught(lab.run(lesson.hook_without_grad)["error"], RuntimeError,
                  "cannot register a hook on a tensor that doesn't require gradient")


def test_post_accumulate_grad_hook_sees_the_running_sum(lab):
    made = lab.run(lesson.post_accumulate_grad_hook)
    assert made["arriving"] == [5.0, 5.0]  # d(5p)/dp per backward
    assert made["accumulated"] == [5.0, 5.0 + 5.0]
    assert made.names["p"].grad.item() == 10.0


def test_post_accumulate_grad_hook_refuses_a_non_leaf():
    x = torch.tensor(1.0, requires_grad=True)
    with pytest.raises(RuntimeError, match="post accumulate grad hooks cannot be registered on non-leaf tensors"):
        (x * 2).register_post_accumulate_grad_hook(lambda t: None)


def test_hook_order_derived_by_hand(lab):
    made = lab.run(lesson.hook_order)
    # y = (2x)·3, so dy/dt = 3 arrives at t. The notes' order: (1) tensor hooks, in registration
    # order: ×10, then the recorder, which sees 30; (2) Node pre-hooks: the recorder sees 30, then
    # ×100 makes 3000; (4) the Node, MulBackward0 of t = 2x, gives 6000; (5) post-hooks see 6000.
    # retain_grad: the notes put it at (3), after the pre-hooks, which would make t.grad 3000 and
    # leave it None in the pre-hook. The engine runs it at the end of (1) (engine.cpp: call_function
    # calls call_tensor_pre_hooks, whose last loop is retains_grad_hooks, before call_pre_hooks), so
    # t.grad is 30 from the pre-hook on.
    tensor_hook_grad = 3 * 10
    node_input = tensor_hook_grad * 100
    assert made["events"] == [("tensor hook", tensor_hook_grad, None),
                              ("Node pre-hook", tensor_hook_grad, tensor_hook_grad),
                              ("Node post-hook", node_input * 2, tensor_hook_grad)]
    assert made["t_grad"].item() == tensor_hook_grad
    assert made["x.grad"].item() == node_input * 2


def test_retain_grad_fires_after_the_tensor_hooks_wherever_it_is_registered():
    """Backs [5]'s comment: registered before the tensor hooks, retain_grad still keeps what they returned."""
    x = torch.tensor(1.0, requires_grad=True)
    t = x * 2
    t.retain_grad()  # first, this time
    seen_by_pre_hook = []
    t.grad_fn.register_prehook(lambda grad_outputs: seen_by_pre_hook.append(t.grad.item()))
    t.register_hook(lambda grad: grad * 10)
    (t * 3).backward()
    assert t.grad.item() == 3 * 10  # after the ×10 tensor hook, not the 3 that arrived
    assert seen_by_pre_hook == [3 * 10]  # and already there when the Node pre-hook runs


def test_multi_grad_hook(lab):
    # Backwards of c·3 (reaches neither a nor b), a·3 (a only), a·b (both): one call for each that reaches a or b.
    reached = [(False, False), (True, False), (True, True)]
    assert lab.run(lesson.multi_grad_hook)["present"] == [[a, b] for a, b in reached if a or b]


def test_module_backward_hooks_shapes_order_and_values(lab):
    made = lab.run(lesson.module_backward_hooks)
    rows, widths = 5, [4, 3, 3, 2]  # Linear(4, 3), Tanh on 3, Linear(3, 2)
    expected = [(str(i), [(rows, widths[i])], [(rows, widths[i + 1])]) for i in (2, 1, 0)]  # backward: last first
    assert made["shapes"] == expected
    names = made.names
    calls = {name: (grad_input, grad_output) for name, grad_input, grad_output in names["calls"]}
    ones = torch.ones(rows, 2, device=names["x"].device)
    assert torch.equal(calls["2"][1][0], ones)  # d sum(out) / d out
    last = names["net"][2]
    assert torch.allclose(calls["2"][0][0], ones @ last.weight)  # through Linear(3, 2): grad_out · W
    assert torch.allclose(calls["0"][0][0], names["x"].grad)  # the first layer's input is x


def test_full_backward_hook_warns_when_no_input_requires_grad():
    """Backs the Try line: the input needs no grad, grad_input is (None,), and PyTorch warns."""
    layer = torch.nn.Linear(4, 3)
    seen = []
    layer.register_full_backward_hook(lambda module, grad_input, grad_output: seen.append(grad_input))
    with pytest.warns(UserWarning, match="Full backward hook is firing when gradients are computed with respect to "
                                         "module outputs"):
        layer(torch.randn(5, 4)).sum().backward()
    assert seen == [(None,)]

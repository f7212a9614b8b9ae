"""07 in-place and anomaly: every value the lesson's checks saw (and the locals its observations
left), against an oracle written here: version numbers counted by hand from the in-place ops,
analytic derivatives with float64 gradcheck and finite differences, and the line numbers of the
lesson's own source read with inspect. TRY_PROMISES: what each of the lesson's Try lines does
(tests/lab/test_tries.py)."""

import inspect
import math

import pytest
import torch

from tests.support import DEVICES, Promise, assert_caught, load_lesson, quiet_lab

lesson = load_lesson("07_debugging_gradients_inplace_and_anomaly.py")

# The lesson's Try lines, in order: the exit code and the text each adds to the output.
TRY_PROMISES = [
    Promise(shows=("device cuda",)),
    Promise(exit=1, shows=("FAIL  no error",)),
    Promise(exit=1, shows=("FAIL  no error",)),
    Promise(exit=1, shows=("FAIL  no error", "FAIL  x.grad = [0.0, 0.0, 0.0]")),
]

MUTANTS = [
    ("07_debugging_gradients_inplace_and_anomaly.py", "    x += z  # a residual", "    x = x + z  # a residual"),
    ("07_debugging_gradients_inplace_and_anomaly.py", "        squares = x.pow(2)  # PowBackward0", "        squares = x.exp()  # PowBackward0"),
    ("07_debugging_gradients_inplace_and_anomaly.py", "    x = x + z  # out of place", "    x = x * z  # out of place"),
    ("07_debugging_gradients_inplace_and_anomaly.py", "    h.mul_(3)  # MulBackward0 saves the 3", "    h.mul_(4)  # MulBackward0 saves the 3"),
    ("07_debugging_gradients_inplace_and_anomaly.py", "    e = torch.exp(h)  # this branch", "    e = torch.sigmoid(h)  # this branch"),
    ("07_debugging_gradients_inplace_and_anomaly.py", "        stack.extend(next_node for next_node, _ in node.next_functions)\n",
     "        pass\n"),
    ("07_debugging_gradients_inplace_and_anomaly.py",
     "    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()", "    return a is b"),
    ("07_debugging_gradients_inplace_and_anomaly.py", "    e.data.zero_()  # e's memory", "    e.data.mul_(1)  # e's memory"),
    ("07_debugging_gradients_inplace_and_anomaly.py", "    y = (torch.sqrt(x) * 0).sum()\n    y.backward()", "    y = (torch.sqrt(x) * 1).sum()\n    y.backward()"),
    ("07_debugging_gradients_inplace_and_anomaly.py", "            with torch.autograd.detect_anomaly():",
     "            with torch.autograd.detect_anomaly(check_nan=False):"),
    ("07_debugging_gradients_inplace_and_anomaly.py", '"now": int(parts["now"]), "saved": int(parts["saved"])', '"now": int(parts["saved"]), "saved": int(parts["now"])'),
    ("07_debugging_gradients_inplace_and_anomaly.py", "            return frames[-1][0], int(frames[-1][1])", "            return frames[0][0], int(frames[0][1])"),
    # [1]: z not named in the reading; the residual added out of place in the graph that is read
    ("07_debugging_gradients_inplace_and_anomaly.py",
     'names={"z": z, "x": x, "loss": loss}', 'names={"z": z.detach(), "x": x, "loss": loss}'),
    ("07_debugging_gradients_inplace_and_anomaly.py",
     "    loss = x.sum()\n    graph = lab.graph(loss,",
     "    loss = x.sum()\n    graph = lab.graph((torch.sigmoid(z) + z).sum(),"),
]

# Written by a tester who had not read these tests, from the lessons and the package alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # ---------------------------------------------------------------- 07 in-place and anomaly
    # inplace_error(): version read after the in-place add: versions (1, 1), and the check vs 'expected version' still agrees
    ('07_debugging_gradients_inplace_and_anomaly.py', '    version_when_saved = x._version\n    x += z  # a residual connection, added in place: the same tensor, its version goes up by one\n', '    x += z  # a residual connection, added in place: the same tensor, its version goes up by one\n    version_when_saved = x._version\n'),
    # safe_inplace(): out-of-place multiply: versions [0, 1, 1]
    ('07_debugging_gradients_inplace_and_anomaly.py', '    h.mul_(3)  # MulBackward0 saves the 3, not h', '    h = h * 3  # MulBackward0 saves the 3, not h'),
    # silent_nan(): an epsilon slipped in: no NaN, x.grad all zeros
    ('07_debugging_gradients_inplace_and_anomaly.py', '    y = (torch.sqrt(x) * 0).sum()\n    y.backward()\n    lab.check(y, 0.0', '    y = (torch.sqrt(x + 1e-12) * 0).sum()\n    y.backward()\n    lab.check(y, 0.0'),
    # message_parts(): 'now' and 'saved' parsed into each other's fields
    ('07_debugging_gradients_inplace_and_anomaly.py', '"now": int(parts["now"]), "saved": int(parts["saved"])', '"now": int(parts["saved"]), "saved": int(parts["now"])'),
]


def line_of(function, statement: str) -> int:
    """The file line number of the one line of `function` that starts with `statement`."""
    lines, first = inspect.getsourcelines(function)
    hits = [first + i for i, line in enumerate(lines) if line.strip().startswith(statement)]
    assert len(hits) == 1, (statement, hits)
    return hits[0]


def float_tensor_type(device: torch.device) -> str:
    return "torch.cuda.FloatTensor" if device.type == "cuda" else "torch.FloatTensor"


def test_the_classic_error_names_the_tensor_the_saver_and_both_versions(lab):
    seen = lab.run(lesson.inplace_error)
    assert_caught(seen["error"], RuntimeError, "has been modified by an inplace operation")
    # One in-place op (x += z) after the save: saved at 0, now 1. sigmoid saved its own output 0.
    assert seen["(version_when_saved, version_now)"] == (0, 1)
    assert seen.names["parts"] == {"type": float_tensor_type(lab.device), "shape": "3", "output": 0, "node": "Sigmoid",
                               "now": 1, "saved": 0}
    # The reading before backward(): sum -> the in-place add -> sigmoid -> z, the add's second
    # input z again; the sigmoid's saved result stale.
    assert seen["[node.name for node in graph.nodes]"] == [
        "SumBackward0", "AddBackward0", "SigmoidBackward0", "AccumulateGrad"]
    label = ("[(node.name, saved.slot, saved.state) "
             "for node in graph.nodes for saved in node.saved]")
    assert seen[label] == [("SigmoidBackward0", "result", "modified in place")]
    assert seen["graph"].splitlines()[1:] == [
        "  n0 SumBackward0",
        "    n1 AddBackward0",
        "      n2 SigmoidBackward0  saved result (modified in place)",
        "        n3 AccumulateGrad  leaf z (shape (3,), float32, 12 bytes, "
        "value [0.5, -1.0, 2.0]), grad None",
        "      n3 (above)"]
    # torch's own nodes, walked from loss: the add is x's grad_fn now, and reading what the
    # sigmoid saved raises with the two versions.
    names = seen.names
    (add, _), = names["loss"].grad_fn.next_functions
    (sigmoid_node, _), (from_z, _) = add.next_functions
    assert add is names["x"].grad_fn and from_z.variable is names["z"]
    assert sigmoid_node.next_functions[0][0] is from_z
    with pytest.raises(RuntimeError, match="is at version 1; expected version 0"):
        sigmoid_node._saved_result  # noqa: B018


def test_message_parts_reads_another_shape_and_version(lab):
    w = torch.ones(2, 3, requires_grad=True, device=lab.device)
    x = torch.exp(w)  # saves its output
    x.mul_(2)
    x.add_(1)  # two in-place ops after the save
    try:
        x.sum().backward()
    except RuntimeError as err:
        error = err
    parts = lesson.message_parts(error)
    assert parts == {"type": float_tensor_type(lab.device), "shape": "2, 3", "output": 0, "node": "Exp",
                     "now": 2, "saved": 0}
    assert lesson.message_parts(RuntimeError("something else")) == dict.fromkeys(
        ["type", "shape", "output", "node", "now", "saved"])


def test_a_saved_input_names_the_inplace_op_and_anomaly_names_the_saver(lab):
    seen = lab.run(lesson.which_op_saved_it)
    result = seen.names
    assert_caught(seen["error"], RuntimeError, "is at version 1; expected version 0")
    assert result["parts"]["node"] == "Add" and result["parts"]["output"] == 0
    assert any("Error detected in PowBackward0" in text for text in seen["warnings"])
    assert result["file"] == inspect.getsourcefile(lesson.which_op_saved_it)
    assert result["line"] == line_of(lesson.which_op_saved_it, "squares = x.pow(2)")


def test_the_fix_gives_the_analytic_gradient(lab):
    seen = lab.run(lesson.out_of_place_fix)
    z = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    s = 1 / (1 + torch.exp(-z))
    assert torch.allclose(seen["z.grad"].cpu().double(), s * (1 - s) + 1, rtol=1e-6)
    assert seen.names["saved"]._version == 0
    assert seen["(x is saved, saved._version)"] == (False, 0)


def test_the_fixed_function_passes_gradcheck():
    z = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: torch.sigmoid(t) + t, (z,))


def test_safe_inplace_ops_count_versions_and_keep_the_gradient(lab):
    seen = lab.run(lesson.safe_inplace)
    result = seen.names
    assert seen["versions"] == [0, 1, 2]  # h += 1, then h.mul_(3)
    # By hand: exp saves its output exp(2w); a multiply by a constant saves only the constant (the
    # other factor is needed only for the constant's gradient, and a constant needs none); add saves none.
    saved = result["saved"]
    assert [name for name, _ in saved] == ["ExpBackward0._saved_result"] + ["MulBackward0._saved_other"] * 2
    w = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(saved[0][1].detach().cpu().double(), torch.exp(2 * w), rtol=1e-6)
    assert sorted(t.item() for _, t in saved[1:]) == [2, 3]
    h_memory = result["h"].untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() != h_memory for _, t in saved)
    # f(w) = sum(exp(2w) + 3(2w + 1)), by float64 central differences.
    f = lambda v: math.exp(2 * v) + 3 * (2 * v + 1)  # noqa: E731
    h = 1e-6
    expected = [(f(v + h) - f(v - h)) / (2 * h) for v in (0.0, 0.5, 1.0)]
    assert torch.allclose(seen["w.grad"].cpu().double(), torch.tensor(expected, dtype=torch.float64),
                          rtol=1e-5)


def test_saved_by_graph_finds_a_saved_input_and_a_view_of_its_memory():
    h = torch.tensor([1.0, 2.0, 3.0], requires_grad=True) * 2
    loss = torch.sin(h).sum() + torch.cos(h[1:]).sum()  # sin saves h itself, cos a view of h
    saved = lesson.saved_by_graph(loss.grad_fn)
    assert [name for name, _ in saved] == ["CosBackward0._saved_self", "MulBackward0._saved_other",
                                           "SinBackward0._saved_self"]
    sharing = [name for name, t in saved if lesson.same_memory(t, h)]
    assert sharing == ["CosBackward0._saved_self", "SinBackward0._saved_self"]
    assert not lesson.same_memory(h, h.clone())


def test_a_change_through_data_is_unseen_and_gives_a_wrong_gradient(lab):
    seen = lab.run(lesson.change_through_data)
    assert seen["e._version"] == 0  # .data has a version counter of its own: e's did not move
    assert seen.names["e"]._version == 0
    # exp's backward is grad * result; the result was zeroed, so 1 * 0 = 0 where exp(w) is the truth.
    assert seen["w.grad"].cpu().tolist() == [0.0, 0.0, 0.0]
    assert [math.exp(v) for v in (0.0, 0.5, 1.0)] != [0.0, 0.0, 0.0]


def test_the_nan_is_silent_without_anomaly_mode(lab):
    seen = lab.run(lesson.silent_nan)
    assert seen["y"].item() == 0.0
    grad = seen["x.grad"].cpu()
    # sqrt's backward divides the incoming gradient (0 here) by 2·sqrt(x): 0 / 0 at x = 0, 0 elsewhere.
    x = torch.tensor([0.0, 1.0, 4.0], dtype=torch.float64)
    by_formula = torch.zeros(3, dtype=torch.float64) / (2 * torch.sqrt(x))
    assert math.isnan(grad[0].item()) and math.isnan(by_formula[0].item())
    assert grad[1:].tolist() == by_formula[1:].tolist() == [0.0, 0.0]


def test_anomaly_mode_raises_and_names_the_sqrt_line(lab):
    seen = lab.run(lesson.anomaly_names_the_line)
    result = seen.names
    assert_caught(seen["error"], RuntimeError,
                  "Function 'SqrtBackward0' returned nan values in its 0th output.")
    assert any("Traceback of forward call that caused the error" in text
               for text in seen["warnings"])
    assert result["file"] == inspect.getsourcefile(lesson.anomaly_names_the_line)
    assert result["line"] == line_of(lesson.anomaly_names_the_line, "y = (torch.sqrt(x)")
    assert seen["x.grad"] is None and result["x"].grad is None


@pytest.mark.parametrize("device", DEVICES)
def test_anomaly_cost_measures_both(device):
    # The timing is printed, never checked (it depends on the machine and its load): the one check
    # left is the traceback's, and it must agree.
    lab = quiet_lab(device)
    result = lab.run(lesson.anomaly_cost).names
    assert result["off"] > 0 and result["on"] > 0  # the ratio itself is printed, not asserted
    assert lab.passed == 1 and lab.failed == [], lab.stream.getvalue()
    assert f"{result['on'] / result['off']:.1f}×" in lab.stream.getvalue()

"""07 · in-place and anomaly: the version-counter error read part by part, and anomaly mode.

A common error, "modified by an inplace operation", provoked on purpose, taken apart, and fixed;
in-place changes that are safe, and one that is silently wrong; a NaN gradient that appears
silently, and what torch.autograd.detect_anomaly() says about it.
"""

# %% Setup
import linecache
import math
import re
import time

import torch

from tensor_features.lab import Lab, Try

lab = Lab.start("07 · in-place and anomaly", __doc__, __name__)

# The parts of torch's message (torch/csrc/autograd/saved_variable.cpp, SavedVariable::unpack):
# "[<type> [<shape>]], which is output <n> of <node>, is at version <now>; expected version
# <saved> instead."
VERSION_ERROR = re.compile(r"\[(?P<type>\S+) \[(?P<shape>[^\]]*)\]\], which is output "
                           r"(?P<output>\d+) of (?P<node>\w+),"
                           r" is at version (?P<now>\d+); expected version (?P<saved>\d+) instead")


def message_parts(error: BaseException | None) -> dict:
    """The fields of a version-counter error message; None for each field when it does not
    match."""
    found = VERSION_ERROR.search(str(error))
    if found is None:
        return dict.fromkeys(VERSION_ERROR.groupindex)
    parts = found.groupdict()
    return {**parts, "output": int(parts["output"]),
            "now": int(parts["now"]), "saved": int(parts["saved"])}


def innermost_frame(warning_texts: list[str]) -> tuple[str | None, int | None]:
    """(file, line) of the last frame in anomaly mode's "Traceback of forward call" warning."""
    for text in warning_texts:
        frames = re.findall(r'File "(.+?)", line (\d+)', text)
        if "Traceback of forward call" in text and frames:
            return frames[-1][0], int(frames[-1][1])
    return None, None


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def saved_by_graph(root) -> list[tuple[str, torch.Tensor]]:
    """("Node._saved_name", tensor) for every tensor saved by a node of the graph behind root,
    by name.

    A node shows what it saved as attributes that start with _saved (Autograd mechanics, Saved
    tensors, pytorch/pytorch docs/source/notes/autograd.md); next_functions leads to its inputs'
    nodes.
    """
    found, seen, stack = [], set(), [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for name in dir(node):
            value = getattr(node, name) if name.startswith("_saved_") else None
            if isinstance(value, torch.Tensor):
                found.append((f"{type(node).__name__}.{name}", value))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return sorted(found, key=lambda item: item[0])


def same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors live in the same storage (a saved tensor may be another object on
    h's memory)."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


# %% [1] The classic in-place error, part by part
# The error provoked on purpose in a realistic shape: an activation saved for backward, then a
# residual added to it in place. Its message taken apart: which tensor, which op, the two version
# numbers, checked against _version. Read before backward(), the graph already shows the trouble:
# the in-place add is a node of its own, between the sum and the sigmoid, and the sigmoid's saved
# result is marked modified in place.
def inplace_error(lab: Lab) -> None:
    """x = sigmoid(z) is saved for backward, then z is added to x in place: backward() fails"""
    z = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    x = torch.sigmoid(z)  # SigmoidBackward0 saves its output x: dσ/dz = x * (1 - x)
    version_when_saved = x._version
    x += z  # a residual connection, added in place: the same tensor, its version goes up by one
    version_now = x._version
    loss = x.sum()
    graph = lab.graph(loss, names={"z": z, "x": x, "loss": loss})
    lab.check([node.name for node in graph.nodes],
              ["SumBackward0", "AddBackward0", "SigmoidBackward0", "AccumulateGrad"],
              "the in-place add is recorded as a node: x's history now ends in it, above "
              "the sigmoid")
    lab.check([(node.name, saved.slot, saved.state)
               for node in graph.nodes for saved in node.saved],
              [("SigmoidBackward0", "result", "modified in place")],
              "the x the sigmoid saved has moved on since: stale before backward() even starts")
    with lab.expect_error("has been modified by an inplace operation",
                          "SigmoidBackward0 needs the x it saved, and x has changed "
                          "since") as caught:
        loss.backward()
    parts = message_parts(caught.error)
    lab.check(parts["type"], x.type(), "which tensor: x's type (float32, on this device)")
    lab.check(parts["shape"], "3", "... and x's shape")
    lab.check((parts["output"], parts["node"]), (0, "Sigmoid"),
              "which op: x is output 0 of the sigmoid, the op that saved it (a saved output "
              "names its saver)")
    lab.check(parts["now"], version_now,
              "'is at version': x._version read after the in-place add")
    lab.check(parts["saved"], version_when_saved,
              "'expected version': x._version read when the sigmoid saved x")
    lab.check((version_when_saved, version_now), (0, 1),
              "one in-place op between the save and backward()")


lab.run(inplace_error)


# %% [2] A saved input: the message names x's grad_fn now, anomaly mode names the saver
# When the saved tensor is an input, the message names x's grad_fn now, not the op that saved it;
# anomaly mode points at the forward line that saved it.
def which_op_saved_it(lab: Lab) -> None:
    """x.pow(2) saves x, then x changes in place: the message names x's grad_fn now; \
anomaly mode finds x.pow(2)"""
    # The error's own hint: anomaly mode records where each op was called (check_nan=False: no
    # NaN checks).
    with torch.autograd.set_detect_anomaly(True, check_nan=False):
        w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
        x = w * 2
        squares = x.pow(2)  # PowBackward0 saves its input x: d(x²)/dx = 2x
        x += 1  # x's grad_fn is now the in-place add
        loss = squares.sum() + x.sum()
        with lab.expect_warning("Error detected in PowBackward0",
                                "the node that could not use its saved x, and where it was "
                                "called") as warned:
            with lab.expect_error("is at version 1; expected version 0",
                                  "PowBackward0 saved x at version 0; the in-place add made it "
                                  "version 1") as caught:
                loss.backward()
    parts = message_parts(caught.error)
    lab.check((parts["node"], type(x.grad_fn).__name__), ("Add", "AddBackward0"),
              "for a saved input the message names x's grad_fn now (here the in-place add), not "
              "the op that saved x")
    file, line = innermost_frame(warned.warnings)
    named_line = linecache.getline(file or "", line or 0).split("#")[0].strip()
    lab.check(named_line, "squares = x.pow(2)",
              "the traceback ends at the forward line of the op that saved x")


lab.run(which_op_saved_it)


# %% [3] The fix: x = x + z
# The fix, x = x + ...: a new tensor, so the one the sigmoid saved is left as it was.
def out_of_place_fix(lab: Lab) -> None:
    """The fix: x = x + z makes a new tensor; the one the sigmoid saved stays at version 0"""
    z = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    x = torch.sigmoid(z)
    saved = x  # the tensor SigmoidBackward0 saved, under a second name
    x = x + z  # out of place: the name x now points at a new tensor
    loss = x.sum()
    loss.backward()
    lab.check((x is saved, saved._version), (False, 0), "the saved tensor was not touched")
    lab.check(z.grad, [sigmoid(v) * (1 - sigmoid(v)) + 1 for v in (0.5, -1.0, 2.0)],
              "d/dz (σ(z) + z) = σ(z)(1 − σ(z)) + 1")


lab.run(out_of_place_fix)


# %% [4] Safe in-place ops: no node saved the tensor they change
# In-place ops that are safe because no node saved the tensor they change.
def safe_inplace(lab: Lab) -> None:
    """In-place ops on a tensor no backward node saved: _version goes up, backward() is fine"""
    w = torch.tensor([0.0, 0.5, 1.0], requires_grad=True)
    h = w * 2  # times a constant: MulBackward0 saves the 2, not w
    e = torch.exp(h)  # this branch uses h, but ExpBackward0 saves its output e, not h
    versions = [h._version]
    h += 1  # AddBackward0 saves no tensor (only alpha = 1, a number)
    versions.append(h._version)
    h.mul_(3)  # MulBackward0 saves the 3, not h
    versions.append(h._version)
    loss = e.sum() + h.sum()
    # (node.attribute, tensor) for each tensor loss's graph saved
    saved = saved_by_graph(loss.grad_fn)
    lab.check([name for name, _ in saved],
              ["ExpBackward0._saved_result",
               "MulBackward0._saved_other", "MulBackward0._saved_other"],
              "exp saved its output e, each multiply its constant; the add saved no tensor")
    lab.check(sorted(tensor.item() for name, tensor in saved if name.startswith("Mul")), [2, 3],
              "the constants of w * 2 and h.mul_(3)")
    lab.check([name for name, tensor in saved if same_memory(tensor, h)], [],
              "none of them is h or shares its memory: the in-place ops on h change nothing a "
              "backward reads")
    loss.backward()
    lab.check(versions, [0, 1, 2], "each in-place op on h bumps its version counter")
    # "if you're using in-place functions and not seeing any errors, you can be sure that the
    # computed gradients are correct" (pytorch/pytorch docs/source/notes/autograd.md, In-place
    # correctness checks); not for changes made through .data, which the counter does not see:
    # [5].
    lab.check(w.grad, [2 * math.exp(2 * v) + 6 for v in (0.0, 0.5, 1.0)],
              "d/dw (exp(2w) + 3(2w + 1)) = 2 exp(2w) + 6, and no error")


lab.run(safe_inplace)


# %% [5] A change through .data: no error, a wrong gradient
# A change made through .data, which the version counter does not see: no error, a wrong
# gradient.
def change_through_data(lab: Lab) -> None:
    """exp saves its output e; e.data.zero_() changes it where the version counter cannot see"""
    w = torch.tensor([0.0, 0.5, 1.0], requires_grad=True)
    e = torch.exp(w)  # ExpBackward0 saves its output e: d exp(w)/dw = exp(w) = e
    e.data.zero_()  # e's memory, changed through .data: autograd does not track it
    lab.check(e._version, 0, "the version counter did not move, so backward() cannot notice")
    e.sum().backward()  # no error
    lab.check(w.grad, [0.0, 0.0, 0.0],
              "exp's backward read the zeroed e: wrong, and silent "
              "(d/dw exp(w) = [1.0, 1.64872, 2.71828])")


lab.run(change_through_data)


# %% [6] A NaN gradient, silently
# A NaN gradient that appears silently: the loss is finite, and nothing complains.
def silent_nan(lab: Lab) -> None:
    """(sqrt(x) * 0).sum() at x = [0, 1, 4]: the loss is 0, one gradient is NaN, nothing \
complains"""
    x = torch.tensor([0.0, 1.0, 4.0], requires_grad=True)
    y = (torch.sqrt(x) * 0).sum()
    y.backward()
    lab.check(y, 0.0, "every term is multiplied by 0")
    # sqrt's backward is grad / (2 * result) (tools/autograd/derivatives.yaml); here grad = 0
    # everywhere.
    lab.check(x.grad, [math.nan, 0.0, 0.0],
              "0 / (2·sqrt(0)) = 0 / 0 = NaN (IEEE 754); 0 / (2√x) = 0 elsewhere")


lab.run(silent_nan)


# %% [7] The same under detect_anomaly(): an error, and the line it came from
# The same under torch.autograd.detect_anomaly(), which raises and names the forward line the NaN
# came from.
def anomaly_names_the_line(lab: Lab) -> None:
    """The same inside torch.autograd.detect_anomaly(): backward() raises and names the forward \
line"""
    x = torch.tensor([0.0, 1.0, 4.0], requires_grad=True)
    with lab.expect_warning("Traceback of forward call that caused the error",
                            "anomaly mode stored where SqrtBackward0's forward op was called, and "
                            "shows it") as warned:
        with lab.expect_error("Function 'SqrtBackward0' returned nan values in its 0th output.",
                              "check_nan=True (the default): a backward that returns NaN raises "
                              "(anomaly_mode.py)"):
            with torch.autograd.detect_anomaly():
                y = (torch.sqrt(x) * 0).sum()
                y.backward()
    file, line = innermost_frame(warned.warnings)
    lab.check(file == anomaly_names_the_line.__code__.co_filename, True,
              "the traceback ends in this lesson's own code")
    named_line = linecache.getline(file or "", line or 0).strip()
    lab.check(named_line.startswith("y = (torch.sqrt("), True,
              "the line it names is the one that called sqrt")
    lab.check(any("This mode will increase the runtime" in text for text in warned.warnings), True,
              "detect_anomaly() itself warns that it is for debugging only")
    lab.check(x.grad, None, "backward() stopped at SqrtBackward0: nothing reached x.grad")


lab.run(anomaly_names_the_line)


# %% [8] What anomaly mode costs
# And what the mode costs in time: measured and printed, not checked.
def forward_backward(steps: int = 100) -> None:
    """A small chain of ops on the default device, forward and backward (the work being timed)."""
    x = torch.tensor([0.5, 1.0, 2.0], requires_grad=True)
    h = x
    for _ in range(steps):
        h = torch.tanh(h)
    h.sum().backward()
    if x.device.type == "cuda":
        torch.cuda.synchronize()  # CUDA runs asynchronously: wait before reading the clock


def anomaly_cost(lab: Lab) -> None:
    """The cost: a chain of 100 tanh, forward and backward, timed with anomaly mode off and on"""
    ones = torch.ones(1, requires_grad=True)
    with torch.autograd.set_detect_anomaly(True):
        made_with = torch.tanh(ones)
    made_without = torch.tanh(ones)
    # torch/csrc/autograd/function.h, Node's constructor: if AnomalyMode::is_enabled(),
    # metadata()->store_stack().
    lab.check(("traceback_" in made_with.grad_fn.metadata,
               "traceback_" in made_without.grad_fn.metadata), (True, False),
              "a node made under anomaly mode stores the Python traceback of its forward call")
    forward_backward()  # warm-up, not timed
    seconds = {"off": [], "on": []}
    for _ in range(5):  # alternate, and keep the best of five of each
        start = time.perf_counter()
        forward_backward()
        seconds["off"].append(time.perf_counter() - start)
        with torch.autograd.set_detect_anomaly(True):
            start = time.perf_counter()
            forward_backward()
            seconds["on"].append(time.perf_counter() - start)
    off, on = min(seconds["off"]), min(seconds["on"])
    lab.note(f"measured here: {off * 1e3:.2f} ms off, {on * 1e3:.2f} ms on: {on / off:.1f}× "
             "(one machine, one run; a timing, not a promise)")
    # Not a check: a timing depends on the machine and its load. The extra work is in the docs:
    # per op a stored traceback (forward) and a NaN check of each gradient (backward).
    lab.note("the price of that extra work in this run; another machine prints another ratio")


lab.run(anomaly_cost)


# %% The end
TRIES = [
    Try("the same error and fix on CUDA: the message names a torch.cuda.FloatTensor",
        flags="--device cuda",
        needs_cuda=True),
    Try("x is no longer changed in place, so backward() succeeds and the expected error never "
        "comes: the checks fail",
        edit=("x += z  # a residual", "x = x + z  # a residual"),
        where=inplace_error),
    Try("x is no longer modified after PowBackward0 saved it: no error, no traceback to read, "
        "and the checks that expect them fail",
        edit=("x += 1  # x's grad_fn", "x = x + 1  # x's grad_fn"),
        where=which_op_saved_it),
    Try("sqrt's backward at 0 becomes 0 / (2·1e-6) = 0, not 0 / 0: no NaN, so anomaly mode has "
        "nothing to raise and x.grad is all zeros: the checks fail",
        edit=("torch.sqrt(x) * 0", "torch.sqrt(x + 1e-12) * 0"),
        where=anomaly_names_the_line),
]
lab.finish(TRIES)

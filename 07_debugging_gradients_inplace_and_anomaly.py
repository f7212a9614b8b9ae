"""07 · in-place and anomaly: the version-counter error read part by part, and what anomaly mode shows.

The error learners paste most often, "modified by an inplace operation", provoked on purpose in
a realistic shape (an activation saved for backward, then a residual added to it in place), its
message taken apart (which tensor, which op, the two version numbers, checked against _version),
and the fix x = x + ...; in-place ops that are safe because nothing saved the tensor they change;
a NaN gradient that appears silently, then the same under torch.autograd.detect_anomaly(), which
raises and names the forward line the NaN came from; and what the mode costs in time.
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
# "[<type> [<shape>]], which is output <n> of <node>, is at version <now>; expected version <saved> instead."
VERSION_ERROR = re.compile(r"\[(?P<type>\S+) \[(?P<shape>[^\]]*)\]\], which is output (?P<output>\d+) of (?P<node>\w+),"
                           r" is at version (?P<now>\d+); expected version (?P<saved>\d+) instead")


def message_parts(error: BaseException | None) -> dict:
    """The fields of a version-counter error message; None for each field when it does not match."""
    found = VERSION_ERROR.search(str(error))
    if found is None:
        return dict.fromkeys(VERSION_ERROR.groupindex)
    parts = found.groupdict()
    return {**parts, "output": int(parts["output"]), "now": int(parts["now"]), "saved": int(parts["saved"])}


def innermost_frame(warning_texts: list[str]) -> tuple[str | None, int | None]:
    """(file, line) of the last frame in anomaly mode's "Traceback of forward call" warning."""
    for text in warning_texts:
        frames = re.findall(r'File "(.+?)", line (\d+)', text)
        if "Traceback of forward call" in text and frames:
            return frames[-1][0], int(frames[-1][1])
    return None, None


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


# %% [1] The classic in-place error, part by part
def inplace_error(lab: Lab) -> dict:
    """x = sigmoid(z) is saved for backward, then x += z changes it in place: backward() fails"""
    z = torch.tensor([0.5, -1.0, 2.0], requires_grad=True, device=lab.device)
    x = torch.sigmoid(z)  # SigmoidBackward0 saves its output x: dσ/dz = x * (1 - x)
    version_when_saved = x._version
    x += z  # a residual connection, added in place: the same tensor, its version goes up by one
    version_now = x._version
    loss = x.sum()
    with lab.expect_error("has been modified by an inplace operation",
                          "SigmoidBackward0 needs the x it saved, and x has changed since") as caught:
        loss.backward()
    parts = message_parts(caught.error)
    lab.check(parts["type"], x.type(), "which tensor: x's type (float32, on this device)")
    lab.check(parts["shape"], "3", "... and x's shape")
    lab.check((parts["output"], parts["node"]), (0, "Sigmoid"),
              "which op: x is output 0 of the sigmoid, the op that saved it (a saved output names its saver)")
    lab.check(parts["now"], version_now, "'is at version': x._version read after x += z")
    lab.check(parts["saved"], version_when_saved, "'expected version': x._version read when the sigmoid saved x")
    lab.check((version_when_saved, version_now), (0, 1), "one in-place op between the save and backward()")
    return {"error": caught.error, "parts": parts, "versions": (version_when_saved, version_now)}


lab.run(inplace_error)


# %% [2] A saved input: the message names the in-place op, anomaly mode names the saver
def which_op_saved_it(lab: Lab) -> dict:
    """x.pow(2) saves its input x, then x += 1: the message names the +=; anomaly mode finds x.pow(2)"""
    # The error's own hint: anomaly mode records where each op was called (check_nan=False: no NaN checks).
    with torch.autograd.set_detect_anomaly(True, check_nan=False):
        w = torch.tensor([1.0, 2.0, 3.0], requires_grad=True, device=lab.device)
        x = w * 2
        squares = x.pow(2)  # PowBackward0 saves its input x: d(x²)/dx = 2x
        x += 1  # x's grad_fn is now the in-place add
        loss = squares.sum() + x.sum()
        with lab.expect_warning("Error detected in PowBackward0",
                                "the node that could not use its saved x, and where it was called") as warned:
            with lab.expect_error("is at version 1; expected version 0",
                                  "PowBackward0 saved x at version 0; x += 1 made it version 1") as caught:
                loss.backward()
    parts = message_parts(caught.error)
    lab.check((parts["node"], type(x.grad_fn).__name__), ("Add", "AddBackward0"),
              "for a saved input the message names the tensor's creator now: the +=, not the op that saved it")
    file, line = innermost_frame(warned.warnings)
    named_line = linecache.getline(file or "", line or 0).split("#")[0].strip()
    lab.check(named_line, "squares = x.pow(2)", "the traceback ends at the forward line of the op that saved x")
    return {"error": caught.error, "parts": parts, "warnings": warned.warnings, "file": file, "line": line}


lab.run(which_op_saved_it)


# %% [3] The fix: x = x + z
def out_of_place_fix(lab: Lab) -> dict:
    """The fix: x = x + z makes a new tensor; the one the sigmoid saved stays at version 0"""
    z = torch.tensor([0.5, -1.0, 2.0], requires_grad=True, device=lab.device)
    x = torch.sigmoid(z)
    saved = x  # the tensor SigmoidBackward0 saved, under a second name
    x = x + z  # out of place: the name x now points at a new tensor
    loss = x.sum()
    loss.backward()
    lab.check((x is saved, saved._version), (False, 0), "the saved tensor was not touched")
    lab.check(z.grad, [sigmoid(v) * (1 - sigmoid(v)) + 1 for v in (0.5, -1.0, 2.0)],
              "d/dz (σ(z) + z) = σ(z)(1 − σ(z)) + 1")
    return {"z.grad": z.grad, "saved._version": saved._version}


lab.run(out_of_place_fix)


# %% [4] Safe in-place ops: nothing saved the tensor they change
def safe_inplace(lab: Lab) -> dict:
    """In-place ops on a tensor no backward node saved: _version goes up, backward() is fine"""
    w = torch.tensor([0.0, 0.5, 1.0], requires_grad=True, device=lab.device)
    h = w * 2  # times a constant: MulBackward0 saves the 2, not w
    e = torch.exp(h)  # this branch uses h, but ExpBackward0 saves its output e, not h
    lab.check(h.grad_fn._saved_self, None, "w * 2 kept no tensor that an in-place op could change")
    lab.check(torch.equal(e.grad_fn._saved_result, e), True, "what exp saved is its output (Autograd mechanics, Saved tensors)")
    versions = [h._version]
    h += 1  # AddBackward0 saves no tensor
    versions.append(h._version)
    h.mul_(3)  # times a constant again: no tensor saved
    versions.append(h._version)
    loss = e.sum() + h.sum()
    loss.backward()
    lab.check(versions, [0, 1, 2], "each in-place op on h bumps its version counter")
    # "if you're using in-place functions and not seeing any errors, you can be sure that the computed
    # gradients are correct" (docs notes/autograd.rst, In-place correctness checks).
    lab.check(w.grad, [2 * math.exp(2 * v) + 6 for v in (0.0, 0.5, 1.0)],
              "d/dw (exp(2w) + 3(2w + 1)) = 2 exp(2w) + 6, and no error")
    return {"w.grad": w.grad, "versions": versions}


lab.run(safe_inplace)


# %% [5] A NaN gradient, silently
def silent_nan(lab: Lab) -> dict:
    """(sqrt(x) * 0).sum() at x = [0, 1, 4]: the loss is 0, one gradient is NaN, nothing complains"""
    x = torch.tensor([0.0, 1.0, 4.0], requires_grad=True, device=lab.device)
    y = (torch.sqrt(x) * 0).sum()
    y.backward()
    lab.check(y, 0.0, "every term is multiplied by 0")
    lab.check(x.grad, [math.nan, 0.0, 0.0], "0 · sqrt′(0) = 0 · inf = NaN (IEEE 754); 0 · 1/(2√x) = 0 elsewhere")
    return {"y": y, "x.grad": x.grad}


lab.run(silent_nan)


# %% [6] The same under detect_anomaly(): an error, and the line it came from
def anomaly_names_the_line(lab: Lab) -> dict:
    """The same inside torch.autograd.detect_anomaly(): backward() raises and names the forward line"""
    x = torch.tensor([0.0, 1.0, 4.0], requires_grad=True, device=lab.device)
    with lab.expect_warning("Traceback of forward call that caused the error",
                            "anomaly mode stored where SqrtBackward0's forward op was called, and shows it") as warned:
        with lab.expect_error("Function 'SqrtBackward0' returned nan values in its 0th output.",
                              "check_nan=True (the default): a backward that returns NaN raises (anomaly_mode.py)") as caught:
            with torch.autograd.detect_anomaly():
                y = (torch.sqrt(x) * 0).sum()
                y.backward()
    file, line = innermost_frame(warned.warnings)
    lab.check(file == anomaly_names_the_line.__code__.co_filename, True, "the traceback ends in this lesson's own code")
    lab.check(linecache.getline(file or "", line or 0).strip(), "y = (torch.sqrt(x) * 0).sum()",
              "the line it names is the one that called sqrt")
    lab.check(any("This mode will increase the runtime" in text for text in warned.warnings), True,
              "detect_anomaly() itself warns that it is for debugging only")
    lab.check(x.grad, None, "backward() stopped at SqrtBackward0: nothing reached x.grad")
    return {"error": caught.error, "warnings": warned.warnings, "file": file, "line": line, "x.grad": x.grad}


lab.run(anomaly_names_the_line)


# %% [7] What anomaly mode costs
def forward_backward(device: torch.device, steps: int = 100) -> None:
    """A small chain of ops, forward and backward (the work being timed)."""
    x = torch.tensor([0.5, 1.0, 2.0], requires_grad=True, device=device)
    h = x
    for _ in range(steps):
        h = torch.tanh(h)
    h.sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()  # CUDA runs asynchronously: wait before reading the clock


def anomaly_cost(lab: Lab) -> dict:
    """The cost: a chain of 100 tanh, forward and backward, timed with anomaly mode off and on"""
    ones = torch.ones(1, requires_grad=True, device=lab.device)
    with torch.autograd.set_detect_anomaly(True):
        made_with = torch.tanh(ones)
    made_without = torch.tanh(ones)
    # torch/csrc/autograd/function.h, Node's constructor: if AnomalyMode::is_enabled(), metadata()->store_stack().
    lab.check(("traceback_" in made_with.grad_fn.metadata, "traceback_" in made_without.grad_fn.metadata), (True, False),
              "a node made under anomaly mode stores the Python traceback of its forward call")
    forward_backward(lab.device)  # warm-up, not timed
    seconds = {"off": [], "on": []}
    for _ in range(5):  # alternate, and keep the best of five of each
        start = time.perf_counter()
        forward_backward(lab.device)
        seconds["off"].append(time.perf_counter() - start)
        with torch.autograd.set_detect_anomaly(True):
            start = time.perf_counter()
            forward_backward(lab.device)
            seconds["on"].append(time.perf_counter() - start)
    off, on = min(seconds["off"]), min(seconds["on"])
    lab.note(f"measured here: {off * 1e3:.2f} ms off, {on * 1e3:.2f} ms on: {on / off:.1f}× "
             "(one machine, one run; a timing, not a promise)")
    lab.check(on > off, True, "the same work plus a stored traceback per op: slower, by the ratio printed above")
    return {"off": off, "on": on}


lab.run(anomaly_cost)


# %% The end
TRIES = [
    Try("the same error and fix on CUDA: the message names a torch.cuda.FloatTensor", flags="--device cuda",
        needs_cuda=True, shows=("device cuda",)),
    Try("x is no longer changed in place, so backward() succeeds and the expected error never comes",
        edit=("x += z  # a residual", "x = x + z  # a residual"), where=inplace_error, exit=1, shows=("FAIL  no error",)),
    Try("x is no longer modified after PowBackward0 saved it: no error, no traceback to read",
        edit=("x += 1  # x's grad_fn", "x = x + 1  # x's grad_fn"), where=which_op_saved_it, exit=1,
        shows=("FAIL  no error",)),
    Try("sqrt(x + 1e-12) keeps the gradient finite (5e5 at 0), so anomaly mode finds nothing to raise",
        edit=("(torch.sqrt(x) * 0).sum()\n", "(torch.sqrt(x + 1e-12) * 0).sum()\n"), where=anomaly_names_the_line,
        exit=1, shows=("FAIL  no error",)),
]
lab.finish(TRIES)

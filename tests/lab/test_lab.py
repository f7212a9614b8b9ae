"""The lab's own plumbing (tensor_features/lab/core.py): what a check prints and counts, the code it
shows, provoked errors and warnings, Try edits, and the exit code. Every lesson relies on these;
here each is pinned on small made-up observations whose right answer is known by hand."""

from __future__ import annotations

import io
import json
import math
import sys
import xml.etree.ElementTree as ET

import pytest
import torch

from tensor_features.lab.core import Lab, Try, format_value, tidy_message, values_match
from tensor_features.lab.graph import RendererMissing, read_graph, renderer
from tensor_features.utils import feature_map

MUTANTS = [
    ("tensor_features/lab/core.py", "ok = ok or self.force_agree", "ok = True"),
    ("tensor_features/lab/core.py", 'return observed is None and expected is None', "return True"),
    ("tensor_features/lab/core.py", "return math.isnan(o) and math.isnan(e)", "return False"),
    ("tensor_features/lab/core.py", "return type(observed) is type(expected) and observed == expected",
     "return observed == expected"),
    ("tensor_features/lab/core.py", 'shown += f" (±{atol:g} + {rtol:g}·|expected|)"', "pass"),
    ("tensor_features/lab/core.py", "ok = isinstance(err, error_type) and match in str(err)", "ok = match in str(err)"),
    ("tensor_features/lab/core.py", "self._record(bool(hits), message[0]", "self._record(True, message[0]"),
    ("tensor_features/lab/core.py", "code = 1 if self.failed else 0", "code = 0"),
    ("tensor_features/lab/core.py", "hidden.update(range(node.lineno, node.end_lineno + 1))\n            elif",
     "pass\n            elif"),
    ("tensor_features/lab/values.py", 'return text + ".0" if text.lstrip("-").isdigit() else text', "return text"),
    ("tensor_features/lab/core.py", "if span.count(old) != 1:", "if span.count(old) == 0:"),
    ("tensor_features/lab/core.py", "return torch.as_tensor(value, dtype=torch.float64) if tensor.is_floating_point() else tensor",
     "return tensor"),
]

# Written by a tester who had not read these tests, from the lessons and the package alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # ---------------------------------------------------------------- lab.py (values_match and checks)
    # values_match loses the shape condition: tensors of different shape compare by broadcasting
    ('tensor_features/lab/core.py', '        if obs.shape != exp.shape:\n            if not (obs.numel() == 1 and exp.numel() == 1):\n                return False\n            obs, exp = obs.reshape(()), exp.reshape(())\n', '        if obs.shape != exp.shape and obs.numel() == 1 and exp.numel() == 1:\n            obs, exp = obs.reshape(()), exp.reshape(())\n'),
    # values_match: NaN no longer matches NaN for tensors
    ('tensor_features/lab/core.py', 'rtol=rtol, atol=atol, equal_nan=True)', 'rtol=rtol, atol=atol, equal_nan=False)'),
    # values_match: lists of different lengths match on their common prefix
    ('tensor_features/lab/core.py', '        return len(observed) == len(expected) and all(\n', '        return all(\n'),
    # values_match: bool vs int no longer distinguished (True matches 1)
    ('tensor_features/lab/core.py', '        return type(observed) is type(expected) and observed == expected\n', '        return observed == expected\n'),
    # values_match: a float NaN matches any number
    ('tensor_features/lab/core.py', '            return math.isnan(o) and math.isnan(e)\n', '            return math.isnan(o) or math.isnan(e)\n'),
    # values_match: None matches anything
    ('tensor_features/lab/core.py', '        return observed is None and expected is None\n', '        return observed is None or expected is None\n'),
    # values_match: float tolerance uses rtol as the absolute tolerance too
    ('tensor_features/lab/core.py', 'return math.isclose(o, e, rel_tol=rtol, abs_tol=atol)', 'return math.isclose(o, e, rel_tol=rtol, abs_tol=max(atol, rtol))'),
    # expect_error: any error whose message matches counts, whatever its type
    ('tensor_features/lab/core.py', 'ok = isinstance(err, error_type) and match in str(err)', 'ok = match in str(err)'),
    # check(): the per-check tolerance is dropped: values_match runs with its defaults
    ('tensor_features/lab/core.py', '        ok = values_match(observed, expected, rtol=rtol, atol=atol)\n', '        ok = values_match(observed, expected)\n'),
    # ---------------------------------------------------------------- format v2 (Seen, names, device, notebook)
    # _Trace keeps the locals at the "call" event, not at "return": Seen.names holds only the arguments (lab), nothing the observation made
    ('tensor_features/lab/core.py', '        elif event == "return" and frame.f_code is self.code:', '        elif event == "call" and frame.f_code is self.code:'),
    # _Trace thinks a tracer is already there when none is: never active, so Seen.names is {} and no `# not run` marks appear
    ('tensor_features/lab/core.py', '        self.active = self.previous is None or isinstance(', '        self.active = self.previous is not None or isinstance('),
    # snapshot no longer copies a tensor: a later in-place change (x.grad.zero_()) rewrites what lab.seen recorded
    ('tensor_features/lab/core.py', '        return value.detach().clone()', '        return value.detach()'),
    # snapshot copies tuples only: a list of tensors checked, then changed in place, shows the changed values in lab.seen
    ('tensor_features/lab/core.py', '    if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):', '    if isinstance(value, tuple) and not isinstance(value, torch.Size):'),
    # Seen.add keeps the first value under a repeated label instead of the last: seen[label] shows the first check's value
    ('tensor_features/lab/core.py', '        self[label] = value\n', '        self.setdefault(label, value)\n'),
    # Lab.run no longer starts a fresh Seen: the Seen it returns still holds the previous observation's labels
    ('tensor_features/lab/core.py', '        self.seen = Seen()\n        # A decorated observation', '        # A decorated observation'),
    # Lab.run does not forget the last observation's published names: the next observation (or cell) can still use its variables
    ('tensor_features/lab/core.py', '        if self.publish:\n            self._forget_published(getattr(function, "__globals__", {}))\n', ''),
    # Lab.run publishes even when publish is False: a lab made directly (tests, imported use) writes the observation's locals into the module's globals
    ('tensor_features/lab/core.py', '            if self.publish:\n', '            if self.live:\n'),
    # Lab.run no longer enters on_device(): on a non-CPU lab device, tensors an observation makes land on the CPU
    ('tensor_features/lab/core.py', '            with self._ran, self.on_device():', '            with self._ran:'),
    # _publish overwrites names the module already has: an observation's local `x` (or `torch`) replaces the module's own global
    ('tensor_features/lab/core.py', '               if name != "lab" and not name.startswith("_") and name not in namespace}', '               if name != "lab" and not name.startswith("_")}'),
    # _publish remembers every local as put there: the next observation's forget deletes the module's own globals of the same name (an import, a helper)
    ('tensor_features/lab/core.py', '        namespace[PUBLISHED] = put', '        namespace[PUBLISHED] = dict(names)'),
    # check records the expected value instead of the observed one: lab.seen[label] shows what was expected, not what was seen
    ('tensor_features/lab/core.py', '        self.seen.add(label or "value", observed)', '        self.seen.add(label or "value", expected)'),
    # expect_error records the message text, not the exception: seen["error"] is a str, isinstance(seen["error"], RuntimeError) fails
    ('tensor_features/lab/core.py', '        self.seen.add(label, err)', '        self.seen.add(label, str(err))'),
    # expect_warning ignores label=: the caught warnings always land under "warnings"
    ('tensor_features/lab/core.py', '        self.seen.add(label, caught.warnings)', '        self.seen.add("warnings", caught.warnings)'),
    # Lab.start publishes only in a notebook: a lesson run as a script leaves no observation locals in its module globals
    ('tensor_features/lab/core.py', '            lab.publish = True', '            lab.publish = in_notebook()'),
    # Try.text drops the flags of a Try that has both an edit and flags: the line says "replace ..." without ", and run with --flag"
    ('tensor_features/lab/core.py', '            if self.flags:\n                what = f"{what}, and run with {self.flags}"\n', ''),
]


def strict_lab(live: bool = False) -> Lab:
    """A lab printing into a buffer that counts honestly even under `make mutate`'s LAB_FORCE_AGREE."""
    lab = Lab("test", "cpu", stream=io.StringIO(), live=live)
    lab.force_agree = False
    return lab


def check_lines(lab: Lab) -> list[str]:
    return [line for line in lab.stream.getvalue().splitlines() if line.startswith(("  ok", "FAIL"))]


# -- values -----------------------------------------------------------------------------------------

def test_format_value_keeps_floats_floats_and_summarises_big_tensors():
    assert format_value(8.0) == "8.0" and format_value(-3.0) == "-3.0" and format_value(8) == "8"
    assert format_value(torch.tensor(2.5)) == "2.5"
    assert format_value(torch.tensor([1.0, 2.0])) == "[1.0, 2.0]"
    assert format_value(torch.zeros(3, 7)) == "<3×7 float32>"
    assert format_value((4,)) == "(4,)" and format_value(torch.Size([2, 3])) == "(2, 3)"


def test_values_match_nan_none_bool_shape_and_tolerance():
    assert values_match(math.nan, math.nan) and values_match(torch.tensor([math.nan]), [math.nan])
    assert not values_match(math.nan, 0.0)
    assert values_match(None, None) and not values_match(None, 0) and not values_match(torch.ones(1), None)
    assert not values_match(True, 1), "a bool is not an int: a lesson that checks requires_grad means it"
    assert not values_match(torch.ones(2, 3), torch.ones(3, 2))
    assert values_match(1.0 + 1e-7, 1.0) and not values_match(1.001, 1.0)
    assert values_match(1.001, 1.0, rtol=1e-2)
    assert not values_match(torch.tensor([1, 2]), [1, 3])


# -- checks -----------------------------------------------------------------------------------------

def test_an_exact_match_prints_ok_with_the_source_text_as_label():
    lab = strict_lab()
    x = torch.tensor(3.0)
    assert lab.check(2 * x + 2, 8.0, "2x + 2 at 3")
    (line,) = check_lines(lab)
    assert line.startswith("  ok  2 * x + 2 = 8.0") and line.endswith("expected 8.0  — 2x + 2 at 3")
    assert "±" not in line, "an exact match shows no tolerance"


def test_a_close_match_says_how_close_counts():
    lab = strict_lab()
    assert lab.check(torch.tensor(0.1, dtype=torch.float32), 0.1, "float32 rounding")
    (line,) = check_lines(lab)
    assert "expected 0.1 (±1e-06 + 1e-05·|expected|)" in line


def test_a_mismatch_prints_fail_and_is_counted():
    lab = strict_lab()
    assert not lab.check(torch.tensor(3.0), 4.0, "wrong on purpose")
    (line,) = check_lines(lab)
    assert line.startswith("FAIL") and "±" not in line
    assert lab.passed == 0 and len(lab.failed) == 1


def test_a_tensor_checked_against_none_fails_instead_of_crashing():
    lab = strict_lab()
    assert not lab.check(torch.ones(2), None, "no gradient expected")
    assert check_lines(lab)[0].startswith("FAIL") and len(lab.failed) == 1


def test_force_agree_counts_a_mismatch_as_agreeing():
    lab = strict_lab()
    lab.force_agree = True
    assert lab.check(3.0, 4.0, "make mutate's setting")
    assert lab.failed == []


# -- provoked errors and warnings ---------------------------------------------------------------------

def test_expect_error_shows_the_message_whole_and_checks_type_and_text():
    lab = strict_lab()
    with lab.expect_error("boom", "raised on purpose") as caught:
        raise RuntimeError("a long message " * 12 + "boom")
    assert isinstance(caught.error, RuntimeError) and lab.failed == []
    printed = lab.stream.getvalue()
    assert printed.count("a long message") == 12, "the message is wrapped, not cut"
    with lab.expect_error("boom", "wrong type"):
        raise ValueError("boom")
    with lab.expect_error("boom", "no error at all"):
        pass
    with lab.expect_error("boom", "other text"):
        raise RuntimeError("bang")
    assert len(lab.failed) == 3 and "no error" in lab.failed[1]


def test_expect_warning_needs_the_warning():
    lab = strict_lab()
    import warnings
    with lab.expect_warning("careful", "warned on purpose"):
        warnings.warn("be careful here")
    assert lab.failed == []
    with lab.expect_warning("careful", "nothing warns"):
        pass
    assert len(lab.failed) == 1 and "no warning" in check_lines(lab)[-1]


# -- the printed code ---------------------------------------------------------------------------------

def doubled(lab: Lab):
    """Double a tensor."""
    x = torch.tensor([1.0, 2.0])
    # the comment above a statement is shown with it
    y = x * 2
    lab.check(y,
              [2.0, 4.0], "each doubled")


def test_run_numbers_the_observation_and_prints_its_own_lines_only():
    lab = strict_lab(live=True)
    lab.run(doubled)
    out = lab.stream.getvalue().splitlines()
    assert out[1:] == [
        "",
        "[1] Double a tensor.",
        "    x = torch.tensor([1.0, 2.0])",
        "    # the comment above a statement is shown with it",
        "    y = x * 2",
        f"  ok  {'y = [2.0, 4.0]':<40} expected [2.0, 4.0]  — each doubled",
    ], "docstring and lab call are hidden; code and comment shown in order"


def branching(lab: Lab, save: bool):
    """A branch not taken."""
    x = torch.tensor([1.0, 2.0])
    if save:
        written = x.tolist()
    else:
        written = None
    with lab.expect_error("bang", "raised on purpose"):
        x.add_(1)
        raise RuntimeError("bang")
        x.add_(100)
    lab.check(written, None, "nothing saved")
    for step in range(2):
        x = x * 2
    lab.check(x, [8.0, 12.0], "doubled twice")


def test_a_statement_that_did_not_run_is_marked():
    lab = strict_lab(live=True)
    lab.run(branching, False)
    code = [line.strip() for line in lab.stream.getvalue().splitlines() if line.startswith("    ")]
    assert code == [
        "x = torch.tensor([1.0, 2.0])",
        "if save:",
        "written = x.tolist()  # not run",
        "else:",
        "written = None",
        "x.add_(1)",
        'raise RuntimeError("bang")',
        "x.add_(100)  # not run",
        "for step in range(2):",
        "x = x * 2",
    ]
    assert lab.failed == []


def test_a_provoked_message_loses_the_labs_frames_and_the_build_paths():
    message = ("Error detected in PowBackward0. Traceback of forward call that caused the error:\n"
               '  File "/home/me/lab/07_lesson.py", line 127, in <module>\n    lab.run(which)\n'
               '  File "/home/me/lab/tensor_features/lab/core.py", line 496, in run\n    return observation(self)\n'
               '  File "/home/me/lab/07_lesson.py", line 110, in which\n    squares = x.pow(2)\n'
               " (Triggered internally at /__w/pytorch/pytorch/build/aten/src/ATen/core/TensorBody.h:488.)")
    assert tidy_message(message) == (
        "Error detected in PowBackward0. Traceback of forward call that caused the error:\n"
        '  File "/home/me/lab/07_lesson.py", line 127, in <module>\n    lab.run(which)\n'
        '  File "/home/me/lab/07_lesson.py", line 110, in which\n    squares = x.pow(2)\n'
        " (Triggered internally at aten/src/ATen/core/TensorBody.h:488.)")
    lab = strict_lab()
    with lab.expect_error("bad", "why"):
        raise RuntimeError("bad (Triggered internally at /opt/build/pytorch/c10/core/x.cpp:1.)")
    assert "internally at c10/core/x.cpp:1.)" in lab.stream.getvalue()


# -- Try lines ----------------------------------------------------------------------------------------

def test_try_edit_must_be_unambiguous_and_is_shown_as_code():
    source = "def a():\n    x = 1  # one\n    y = 1\n"
    one = Try(then="x becomes 2", edit=("x = 1  # one", "x = 2"))
    assert one.apply(source) == "def a():\n    x = 2\n    y = 1\n"
    assert one.text() == "replace `x = 1` with `x = 2`: x becomes 2"
    with pytest.raises(ValueError, match="occurs 2 times"):
        Try(then="?", edit=("= 1", "= 2")).apply(source)
    assert Try(then="the check fails", flags="--size 3").text() == "--size 3: the check fails"


# -- the end --------------------------------------------------------------------------------------------

def test_finish_exits_1_on_a_disagreement_and_writes_the_summary(tmp_path, monkeypatch):
    summary = tmp_path / "summary.jsonl"
    monkeypatch.setenv("LAB_SUMMARY", str(summary))
    lab = strict_lab(live=True)
    lab.check(1.0, 2.0, "wrong")
    lab.check(1.0, 1.0, "right")
    with pytest.raises(SystemExit) as exit_info:
        lab.finish()
    assert exit_info.value.code == 1
    assert "1/2 checks match; these do not:" in lab.stream.getvalue()
    record = json.loads(summary.read_text())
    assert (record["passed"], record["total"]) == (1, 2)
    good = strict_lab(live=True)
    good.check(1.0, 1.0, "right")
    with pytest.raises(SystemExit) as exit_info:
        good.finish()
    assert exit_info.value.code == 0


def helper_of_the_lesson(t):
    return t + 1


def uses_a_helper(lab: Lab):
    """A helper from this file and one from the package, each pointed to once."""
    y = helper_of_the_lesson(torch.ones(1))  # one more
    z = helper_of_the_lesson(y) + feature_map(y.reshape(1, 1)).sum() + torch.exp(y)
    lab.check(z.item(), 3.0 + (2.0 + 4.0 + 8.0) + math.exp(2.0), "y = 2: 3, then 2 + 4 + 8, then e²", rtol=1e-6)


def test_a_helpers_first_call_says_where_it_is_defined():
    lab = strict_lab(live=True)
    lab.run(uses_a_helper)
    code = [line.strip() for line in lab.stream.getvalue().splitlines() if line.startswith("    ")]
    line = helper_of_the_lesson.__code__.co_firstlineno  # the oracle: where Python says it starts
    assert code[0] == f"y = helper_of_the_lesson(torch.ones(1))  # one more · helper_of_the_lesson: defined in this file, line {line}"
    assert code[1] == ("z = helper_of_the_lesson(y) + feature_map(y.reshape(1, 1)).sum() + torch.exp(y)"
                       "  # feature_map: from tensor_features.utils")
    assert lab.failed == []


# -- found by blind mutants (written by a tester who had not read these tests) ----------------------

def test_lists_of_another_length_never_match():
    # zip() stops at the shorter list: without the length check, a lesson's `events == [...]`
    # would pass with items missing.
    assert not values_match([1, 2], [1, 2, 3]) and not values_match([1, 2, 3], [1, 2])
    assert not values_match((0.5,), (0.5, 0.25)) and not values_match([], [1])
    assert values_match([1, [2.0, 3.0]], (1, (2.0, 3.0)))


def test_python_floats_honour_the_absolute_tolerance_alone():
    # Oracle by hand: |1e-4 - 0| = 1e-4 is beyond atol = 1e-6 and rtol·|expected| = 0.
    assert not values_match(1e-4, 0.0, rtol=1e-3, atol=1e-6)
    assert values_match(5e-7, 0.0, rtol=1e-3, atol=1e-6)
    assert not values_match(1.002, 1.0, rtol=1e-3, atol=0.0) and values_match(1.0009, 1.0, rtol=1e-3, atol=0.0)


def test_check_uses_the_tolerance_it_is_given():
    lab = strict_lab()
    assert lab.check(1.0 + 1e-7, 1.0, "within the default tolerance")
    assert not lab.check(1.0 + 1e-7, 1.0, "exact asked for", rtol=0.0, atol=0.0)
    assert lab.check(1.05, 1.0, "a wide tolerance asked for", rtol=0.1)
    assert len(lab.failed) == 1


def timing_only(lab: Lab):
    """A loop and no branch: run untraced."""
    for _ in range(3):
        pass


def test_only_observations_that_can_skip_a_line_are_traced():
    # Line events slow every line; an observation with no branch, try, while, early exit or
    # lab.expect_ block is traced for its return only (its locals), never line by line.
    from tensor_features.lab.core import _may_skip_lines

    assert _may_skip_lines(branching) and not _may_skip_lines(timing_only) and not _may_skip_lines(doubled)


# -- what an observation leaves: Seen, its locals, the default device ---------------------------------

def recorded(lab: Lab, k: int = 2) -> None:
    """an observation that checks the same label twice and keeps a tensor it changes afterwards"""
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    (x * x).sum().backward()
    lab.check(x.grad, [2.0, 4.0], "2x")
    x.grad.zero_()  # after the check: what the check saw must not change with it
    lab.check(x.grad, [0.0, 0.0], "zeroed")
    scale = k * 10
    lab.check(scale, 20, "k times 10", rtol=0.1, atol=k)
    with lab.expect_error("boom", "provoked"):
        raise RuntimeError("boom")


def test_seen_holds_what_each_check_saw_under_its_label():
    lab = strict_lab(live=True)
    seen = lab.run(recorded)
    assert seen is lab.seen and lab.failed == []
    assert seen["x.grad"].tolist() == [0.0, 0.0]  # the last check labelled x.grad
    assert [g.tolist() for g in seen.every("x.grad")] == [[2.0, 4.0], [0.0, 0.0]]  # a snapshot each
    assert seen["scale"] == 20 and seen.every("missing") == []
    assert isinstance(seen["error"], RuntimeError) and str(seen["error"]) == "boom"
    # The observation's locals as it returned: x.grad was zeroed after the first check.
    assert set(seen.names) >= {"x", "scale", "k"} and seen.names["x"].grad.tolist() == [0.0, 0.0]
    # What each check expected, and how close counted: the last check under a label.
    scale, grad = seen.expected["scale"], seen.expected["x.grad"]
    assert (scale.value, scale.rtol, scale.atol) == (20, 0.1, 2)
    assert (grad.value, grad.rtol, grad.atol) == ([0.0, 0.0], 1e-5, 1e-6)  # the defaults
    assert "error" not in seen.expected  # a provoked error is no comparison
    assert lab.run(recorded, k=3)["scale"] == 30 and lab.failed == ["[2] scale = 30"]


def test_an_imported_lesson_lab_runs_nothing_and_records_nothing():
    lab = strict_lab(live=False)
    assert lab.run(recorded) is None and lab.seen == {} and lab.observation == 0


def uses_an_earlier_local(lab: Lab) -> None:
    """an observation that reads a name no statement of its own defines"""
    lab.check(x.grad, [0.0, 0.0], "a name from another observation")  # noqa: F821


def test_published_locals_are_globals_until_the_next_observation():
    # As in a notebook: after [1], its x is there to inspect; [2] cannot use it by accident.
    lab = strict_lab(live=True)
    lab.publish = True
    namespace = recorded.__globals__
    assert "x" not in namespace and "scale" not in namespace
    lab.run(recorded)
    assert namespace["x"] is lab.seen.names["x"] and namespace["scale"] == 20
    assert namespace["recorded"] is recorded  # a name the module already had is left alone
    with pytest.raises(NameError, match="'x' is not defined"):
        lab.run(uses_an_earlier_local)
    assert "x" not in namespace and "scale" not in namespace


def test_without_publish_the_module_is_left_alone():
    lab = strict_lab(live=True)
    lab.run(recorded)
    assert "x" not in recorded.__globals__ and "scale" not in recorded.__globals__


def makes_tensors(lab: Lab) -> None:
    """an observation that makes tensors without naming a device"""
    made = torch.tensor(1.0)
    layer = torch.nn.Linear(2, 1)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_the_labs_device_is_the_default_inside_an_observation(device):
    # "meta" stands in for a GPU here: a real device other than the CPU's, with no memory behind it.
    lab = Lab("test", device, stream=io.StringIO())
    names = lab.run(makes_tensors).names
    assert names["made"].device.type == device and names["layer"].weight.device.type == device
    assert torch.tensor(1.0).device.type == "cpu"  # outside the observation, as before


def test_a_started_lesson_publishes_and_an_imported_one_does_not():
    started = Lab.start("t", None, "__main__", argv=["--device", "cpu"])
    imported = Lab.start("t", None, "some_lesson", argv=[])
    assert started.publish is True and imported.publish is False


def checks_a_list_then_changes_it(lab: Lab) -> None:
    """an observation that checks a list holding a tensor, then changes both"""
    values = [torch.tensor([1.0, 2.0])]
    lab.check(values, [[1.0, 2.0]], "as made")
    values[0].mul_(10)
    values.append(torch.tensor(3.0))


def test_a_list_is_seen_as_it_was_when_checked():
    seen = strict_lab(live=True).run(checks_a_list_then_changes_it)
    assert len(seen["values"]) == 1 and seen["values"][0].tolist() == [1.0, 2.0]
    assert seen.names["values"][0].tolist() == [10.0, 20.0]  # the locals are the live objects


def warns_twice(lab: Lab) -> None:
    """an observation with a labelled warning"""
    import warnings

    with lab.expect_warning("careful", "provoked", label="first warning"):
        warnings.warn("careful now")


def test_a_warning_is_seen_under_its_label():
    seen = strict_lab(live=True).run(warns_twice)
    assert seen["first warning"] == ["careful now"] and "warnings" not in seen


def test_a_try_with_an_edit_and_flags_says_both():
    attempt = Try(then="it runs bigger", edit=("n = 1", "n = 2"), flags="--size 8")
    assert attempt.text(3) == "in [3], replace `n = 1` with `n = 2`, and run with --size 8: it runs bigger"


def test_publishing_never_replaces_or_later_removes_a_name_the_module_had():
    namespace = recorded.__globals__
    namespace["scale"] = "the module's own"
    try:
        lab = strict_lab(live=True)
        lab.publish = True
        lab.run(recorded)
        assert namespace["scale"] == "the module's own" and "x" in namespace
        lab.run(makes_tensors)  # forgets [1]'s names: x goes, the module's scale stays
        assert namespace["scale"] == "the module's own" and "x" not in namespace
    finally:
        del namespace["scale"]
        Lab._forget_published(namespace)


def test_each_run_starts_a_fresh_record():
    lab = strict_lab(live=True)
    lab.run(recorded)
    assert "x.grad" not in lab.run(makes_tensors) and lab.seen == {}


def names_a_module_global(lab: Lab) -> None:
    """an observation whose local has the name, and the object, of a module global"""
    torch = __import__("torch")  # noqa: F811 - the module's own torch, under its own name
    lab.check(torch.tensor(2.0), 2.0, "made")


def test_a_local_that_is_a_module_global_is_neither_published_nor_removed():
    namespace = recorded.__globals__
    lab = strict_lab(live=True)
    lab.publish = True
    lab.run(names_a_module_global)
    lab.run(makes_tensors)
    Lab._forget_published(namespace)
    assert namespace["torch"] is torch


def test_a_lab_made_again_replaces_what_an_earlier_one_left():
    # A notebook's setup cell run twice makes a second lab; it must not show the first one's x.
    namespace = recorded.__globals__
    first, second = strict_lab(live=True), strict_lab(live=True)
    first.publish = second.publish = True
    try:
        first.run(recorded)
        second.run(recorded, k=3)
        assert namespace["scale"] == 30 and namespace["x"] is second.seen.names["x"]
    finally:
        Lab._forget_published(namespace)
    assert "x" not in namespace


def test_a_name_the_learner_bound_again_is_theirs():
    namespace = recorded.__globals__
    lab = strict_lab(live=True)
    lab.publish = True
    lab.run(recorded)
    namespace["x"] = "the learner's x"
    try:
        lab.run(makes_tensors)
        assert namespace["x"] == "the learner's x"
    finally:
        del namespace["x"]
        Lab._forget_published(namespace)


def test_a_cpu_lab_inside_another_labs_device_makes_cpu_tensors():
    # 09's ranks on gloo: a CPU lab runs inside the lesson lab's observation ("meta": a GPU's stand-in).
    def outer(lab: Lab) -> None:
        """an observation that runs another lab's"""
        lab.check(Lab("rank", "cpu", stream=io.StringIO()).run(makes_tensors).names["made"].device.type,
                  "cpu", "the inner lab's device")

    lab = Lab("test", "meta", stream=io.StringIO())
    lab.run(outer)
    assert lab.failed == []


def test_a_caught_error_is_kept_without_its_traceback():
    seen = strict_lab(live=True).run(recorded)
    assert seen["error"].__traceback__ is None  # its frames (and their tensors) are not kept alive


# -- lab.graph_diff, and lab.graph on a scalar engine (the lens: tests/lab/test_graph.py) ---------

def detached_square(lab: Lab) -> None:
    """y = x**2 + 2x, then its square detached"""
    x = torch.tensor(3.0, requires_grad=True)
    before = lab.graph(x**2 + 2 * x, names={"x": x})
    after = read_graph(x.detach() ** 2 + 2 * x, names={"x": x})
    lab.graph_diff(before, after)
    lab.check(x.grad, None, "no backward ran")  # the run goes on after the picture


# What the detach cuts, by hand: Add(Pow(x), Mul(x, 2)) loses Pow (n1) and its two edges; Add's
# first input becomes a None edge.
DETACHED_CHANGES = ["removed n1 PowBackward0",
                    "removed edge n0 AddBackward0 -> n1 PowBackward0 (input 0)",
                    "removed edge n1 PowBackward0 -> n2 AccumulateGrad (input 0)",
                    "added edge n0 AddBackward0 -> None (input 0)"]


def test_graph_diff_prints_one_line_per_change_and_returns_the_diff():
    lab = strict_lab(live=True)
    seen = lab.run(detached_square)
    assert seen["graph diff"].splitlines() == DETACHED_CHANGES
    printed = lab.stream.getvalue().splitlines()
    start = printed.index("      " + DETACHED_CHANGES[0])
    assert printed[start:start + 4] == ["      " + line for line in DETACHED_CHANGES]
    assert "picture:" not in lab.stream.getvalue() and lab.failed == []  # no --graphs: no file


def test_graph_diff_returns_the_graph_diff_with_its_fields():
    x = torch.tensor(3.0, requires_grad=True)
    before = read_graph(x**2 + 2 * x, names={"x": x})
    changes = strict_lab().graph_diff(before, read_graph(x.detach() ** 2 + 2 * x, names={"x": x}))
    assert [(node.id, node.name) for node in changes.removed] == [("n1", "PowBackward0")]
    assert changes.added == () and changes.saved == () and changes.versions == ()
    assert len(changes.edges_removed) == 2 and len(changes.edges_added) == 1 and not changes.empty


def renderer_missing() -> bool:
    try:
        renderer()
    except RendererMissing:
        return True
    return False


NEEDS_RENDERER = pytest.mark.skipif(
    renderer_missing(), reason="graphviz-pure is not installed (pip install graphviz-pure)")


@NEEDS_RENDERER
def test_graph_diff_with_graphs_dir_writes_the_side_by_side_picture_after_lab_graphs(tmp_path):
    lab = strict_lab(live=True)
    lab.args.graphs, lab.prog = str(tmp_path / "pictures"), "lesson.py"
    lab.run(detached_square)
    # One counter K for both kinds: lab.graph's picture is 1, the diff's 2, both of observation 1.
    written = tmp_path / "pictures" / "lesson-1-2.svg"
    assert sorted(p.name for p in written.parent.iterdir()) == ["lesson-1-1.svg", written.name]
    assert f"      picture: {written}" in lab.stream.getvalue().splitlines()
    root = ET.fromstring(written.read_text(encoding="utf-8"))
    svg = "{http://www.w3.org/2000/svg}"
    groups = {g.find(f"{svg}title").text: [t.text for t in g.iter(f"{svg}text")]
              for g in root.iter(f"{svg}g") if g.get("class") in ("node", "cluster")}
    assert groups["cluster_before"] == ["before"] and groups["cluster_after"] == ["after"]
    assert groups["b_n1"] == ["n1 PowBackward0", "removed"] and groups["a_n0_in0"] == ["None"]
    assert lab.failed == []


def test_graph_diff_without_the_renderer_is_one_line_and_the_run_goes_on(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    lab = strict_lab(live=True)
    lab.args.graphs, lab.prog = str(tmp_path / "pictures"), "lesson.py"
    lab.run(detached_square)
    printed = lab.stream.getvalue()
    # one line for lab.graph's picture, one for the diff's: each picture says it once
    assert printed.count("(no picture: graphviz-pure is not installed") == 2
    assert "Traceback" not in printed and "picture: " + str(tmp_path) not in printed
    assert not (tmp_path / "pictures").exists() and check_lines(lab)[-1].startswith("  ok  x.grad")


class Scalar:
    """What lab.graph needs of a scalar engine's Value: data, grad, name, parents."""

    def __init__(self, data: float, name: str = "", parents: tuple = (), grad: float = 0.0):
        self.data, self.grad, self.name, self.parents = data, grad, name, parents


def engine_values(lab: Lab) -> None:
    """y = 2 * x on a scalar engine, after its backward"""
    x = Scalar(3.0, "x", grad=2.0)
    y = Scalar(6.0, "*", (Scalar(2.0, "2", grad=3.0), x), grad=1.0)
    lab.graph(y)


def test_lab_graph_reads_a_scalar_engines_values_from_their_parents():
    seen = strict_lab(live=True).run(engine_values)
    assert seen["graph"].splitlines() == [
        "output (shape (), float64, 8 bytes, value 6.0)",
        "  n0 *  value 6.0, grad 1.0",
        "    n1 input  leaf 2 (shape (), float64, 8 bytes, value 2.0), grad 3.0",
        "    n2 input  leaf x (shape (), float64, 8 bytes, value 3.0), grad 2.0",
    ]

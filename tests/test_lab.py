"""The lab's own plumbing (tensor_features/lab.py): what a check prints and counts, the code it
shows, provoked errors and warnings, Try edits, and the exit code. Every lesson relies on these;
here each is pinned on small made-up observations whose right answer is known by hand."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

from tensor_features.lab import Lab, Try, format_value, values_match

MUTANTS = [
    ("tensor_features/lab.py", "ok = ok or self.force_agree", "ok = True"),
    ("tensor_features/lab.py", 'return observed is None and expected is None', "return True"),
    ("tensor_features/lab.py", "return math.isnan(o) and math.isnan(e)", "return False"),
    ("tensor_features/lab.py", "return type(observed) is type(expected) and observed == expected",
     "return observed == expected"),
    ("tensor_features/lab.py", 'shown += f" (±{atol:g} + {rtol:g}·|expected|)"', "pass"),
    ("tensor_features/lab.py", "ok = isinstance(err, error_type) and match in str(err)", "ok = match in str(err)"),
    ("tensor_features/lab.py", "self._record(bool(hits), message[0]", "self._record(True, message[0]"),
    ("tensor_features/lab.py", "code = 1 if self.failed else 0", "code = 0"),
    ("tensor_features/lab.py", "hidden.update(range(node.lineno, node.end_lineno + 1))\n            elif",
     "pass\n            elif"),
    ("tensor_features/lab.py", 'return text + ".0" if text.lstrip("-").isdigit() else text', "return text"),
    ("tensor_features/lab.py", "if span.count(old) != 1:", "if span.count(old) == 0:"),
    ("tensor_features/lab.py", "return torch.as_tensor(value, dtype=torch.float64) if tensor.is_floating_point() else tensor",
     "return tensor"),
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
    return y


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
    ], "docstring, lab call and return are hidden; code and comment shown in order"


# -- Try lines ----------------------------------------------------------------------------------------

def test_try_edit_must_be_unambiguous_and_is_shown_as_code():
    source = "def a():\n    x = 1  # one\n    y = 1\n"
    one = Try(then="x becomes 2", edit=("x = 1  # one", "x = 2"))
    assert one.apply(source) == "def a():\n    x = 2\n    y = 1\n"
    assert one.text() == "replace `x = 1` with `x = 2`: x becomes 2"
    with pytest.raises(ValueError, match="occurs 2 times"):
        Try(then="?", edit=("= 1", "= 2")).apply(source)
    assert Try(then="fails", flags="--size 3", exit=1).text() == "--size 3: fails (exit 1: a check disagrees)"


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

"""Every "Try:" line of every lesson, run: flags on the command line, edits on a copy of the lesson.

A lesson's Try says what happens in words; its promise in a form a test checks (the exit code,
text the output gains) is in the lesson's test file, TRY_PROMISES, one per Try in order. The text
must be new, absent from the unchanged lesson's output, so that a Try which changes nothing
cannot pass. The edit is located by Try.apply itself, the code the learner's --try N runs.
"""

import importlib
import os

import pytest
import torch

from tests.support import Promise, lesson_param, run_in_process, terminal_run
from tensor_features.lab.core import FORCE_AGREE_ENV, Try, _code_only
from tensor_features.lab.lessons import lesson_paths, load_lesson, short_name

# Under `make mutate` every check agrees, so a Try that promises a disagreement cannot be run.
honest_checks = pytest.mark.skipif(os.environ.get(FORCE_AGREE_ENV) == "1", reason="checks forced to agree")


# Written by a tester who had not read these tests, from the lab's code alone
# (make mutate runs them with the others; `python -m tests.mutate --blind` runs only these).
BLIND_MUTANTS = [
    # run_try's result message calls exit 1 a success: "ended with exit 1 (every check agreed)"
    ('tensor_features/lab/tries.py', '1: "a check disagreed, or the copy stopped with an error above"', '1: "every check agreed"'),
]


def promises(path) -> list[Promise]:
    """TRY_PROMISES of the lesson's test file (tests/lessons/test_05_backward.py for 05 backward)."""
    module = importlib.import_module(f"tests.lessons.test_{short_name(path.name).replace(' ', '_')}")
    return getattr(module, "TRY_PROMISES", [])


CASES = [(path, index, attempt) for path in lesson_paths()
         for index, attempt in enumerate(getattr(load_lesson(path), "TRIES", []))]


@pytest.mark.parametrize("path", lesson_paths(), ids=lambda p: short_name(p.name))
def test_every_lesson_has_tries_and_a_promise_for_each(path):
    tries = getattr(load_lesson(path), "TRIES", None)
    assert tries and all(isinstance(t, Try) for t in tries), path.name
    assert any(t.edit is not None for t in tries), f"{path.name}: at least one edit to try"
    assert len(promises(path)) == len(tries), f"{path.name}: one TRY_PROMISES entry per Try, in order"


@honest_checks
@pytest.mark.parametrize("path, index, attempt", [lesson_param(p, p, i, a) for p, i, a in CASES],
                         ids=[f"{short_name(p.name)}-{i}" for p, i, _ in CASES])
def test_try_does_what_it_says(path, index, attempt, tmp_path, shared_folder):
    if attempt.needs_cuda and not torch.cuda.is_available():
        pytest.skip("offered only where a GPU is visible")
    promise = promises(path)[index]
    assert promise.shows, "a Try promises text a learner will see"
    # The printed line tells the learner what the exit code will say.
    assert (promise.exit == 1) == any(word in attempt.then for word in ("fail", "disagree")), \
        f"a Try whose edit makes a check disagree says so in its words, and only then: {attempt.then!r}"
    argv = attempt.flags.split()
    if "--device" not in argv:
        argv += ["--device", "cpu"]
    target = path
    if attempt.edit is not None:
        source = path.read_text()
        edited = attempt.apply(source)  # ValueError unless the edit's text is there exactly once
        # The learner sees the edit without comments: that text must point at one place too.
        start, end = attempt.bounds(source)
        code = "\n".join(_code_only(line) for line in source[start:end].splitlines())
        shown = "\n".join(_code_only(line) for line in attempt.edit[0].splitlines())
        assert code.count(shown) == 1, f"the Try line's `{shown}` is ambiguous in its observation"
        target = tmp_path / path.name
        target.write_text(edited)
    finished = run_in_process(target, argv)
    assert finished.code == promise.exit, finished.stdout[-3000:] + finished.stderr
    assert "Traceback" not in finished.stderr
    for text in promise.shows:
        assert text in finished.stdout + finished.stderr, text
    if promise.exit == 1:
        assert "checks match; these do not:" in finished.stdout
    unchanged = terminal_run(path, shared_folder)  # the unchanged lesson, run once (tests/support.py)
    assert unchanged.returncode == 0
    assert not all(text in unchanged.stdout + unchanged.stderr for text in promise.shows), \
        "the promised text is there without the change too"
    # The lesson prints this Try (CUDA ones only where a GPU is visible).
    if not attempt.needs_cuda:
        assert attempt.text(None).split(": ", 1)[1] in unchanged.stdout


# -- python LESSON.py --tries / --try N ---------------------------------------------------------------

BACKWARD = next(p for p in lesson_paths() if p.name == "05_gradient_computation_backward.py")


def test_tries_lists_every_try_numbered(capsys):
    finished = run_in_process(BACKWARD, ["--tries"])
    assert finished.code == 0
    tries = load_lesson(BACKWARD).TRIES
    for number, attempt in enumerate(tries, 1):
        assert f"  {number}. " in finished.stdout
    assert "(needs a GPU)" in finished.stdout.splitlines()[1]  # Try 1 is the --device cuda one
    assert "in [2], delete `h.retain_grad()`" in finished.stdout  # [n] as the run numbers it


@honest_checks
def test_try_runs_the_edit_on_a_copy_and_leaves_the_file_alone(capfd):
    before = BACKWARD.read_bytes()
    finished = run_in_process(BACKWARD, ["--try", "2", "--device", "cpu"])
    child = capfd.readouterr().out  # the copy runs in a child process, straight to the terminal
    assert BACKWARD.read_bytes() == before
    assert finished.code == 1, "the copy's exit code: its h.grad check disagrees, as Try 2 says"
    assert "-    h.retain_grad()" in finished.stdout  # the diff
    assert "FAIL  h.grad = None" in child and "13/14 checks match" in child
    assert "Try 2 ended with exit 1 (a check disagreed" in finished.stdout


def test_try_out_of_range_is_one_line_and_exit_2():
    count = len(load_lesson(BACKWARD).TRIES)
    finished = run_in_process(BACKWARD, ["--try", str(count + 1)])
    assert finished.code == 2
    assert finished.stderr.strip().splitlines() == [
        f"05_gradient_computation_backward.py: error: --try {count + 1}: this lesson has Try 1 to {count} "
        "(--tries lists them)"]


def test_the_verdict_after_a_try_reads_the_exit_code_as_the_lab_sets_it():
    from tensor_features.lab.tries import exit_meaning

    # Lab.finish: 1 when a check disagreed, else 0; a bad flag is argparse's 2; Ctrl-C is 130.
    assert [exit_meaning(code) for code in (0, 1, 2, 130)] == [
        "every check agreed", "a check disagreed, or the copy stopped with an error above",
        "a bad flag or environment", "interrupted"]


def test_passed_on_drops_only_the_try_flags():
    from tensor_features.lab.tries import passed_on

    assert passed_on(["--try", "2", "--device", "cpu", "--size", "8"], drop_device=False) == \
        ["--device", "cpu", "--size", "8"]
    assert passed_on(["--try=2", "--device=cpu", "--tries"], drop_device=True) == []
    assert passed_on(["--device", "cuda", "--try", "1"], drop_device=True) == []


def test_try_after_the_edit_was_made_by_hand_is_one_line(tmp_path):
    # The README says the edit can be made by hand; --try N on that file then cannot apply it.
    edited = tmp_path / BACKWARD.name
    edited.write_text(load_lesson(BACKWARD).TRIES[1].apply(BACKWARD.read_text()))  # the learner's own edit
    finished = run_in_process(edited, ["--try", "2", "--device", "cpu"])
    assert finished.code == 2 and "Traceback" not in finished.stderr
    assert len(finished.stderr.strip().splitlines()) == 1
    assert "Try 2's edit no longer applies" in finished.stderr

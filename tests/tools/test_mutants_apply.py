"""Every mutant that `make mutate` will try still applies: its file exists and its old text occurs
there exactly once. Code moves on; a stale mutant would otherwise stop `make mutate` only when it
is run, long after the edit that made it stale. (Whether each mutant is killed is `make mutate`'s
job, which takes most of an hour; this takes a moment.)"""

from tests.mutate import collect, problems, run_tests


def test_every_mutant_applies_to_todays_code():
    mutants = collect()
    assert len(mutants) > 200
    assert problems(mutants) == []


def test_a_mutant_that_hangs_is_stopped_and_counted_as_killed(tmp_path):
    # A mutant can turn a loop into one that never ends: its test run must stop at the limit,
    # with the processes it started, and count as a kill (passed is None), not hang make mutate.
    (tmp_path / "test_forever.py").write_text(
        "import subprocess, sys, time\n"
        "def test_forever():\n"
        "    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        "    time.sleep(300)\n")
    passed, seconds = run_tests(tmp_path, "test_forever.py", timeout=3)
    assert passed is None and 3 <= seconds < 30
    (tmp_path / "test_forever.py").write_text("def test_quick():\n    assert True\n")
    assert run_tests(tmp_path, "test_forever.py", timeout=60)[0] is True

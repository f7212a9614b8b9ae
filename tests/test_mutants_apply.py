"""Every mutant that `make mutate` will try still applies: its file exists and its old text occurs
there exactly once. Code moves on; a stale mutant would otherwise stop `make mutate` only when it
is run, long after the edit that made it stale. (Whether each mutant is killed is `make mutate`'s
job, which takes most of an hour; this takes a moment.)"""

from mutate import collect, problems


def test_every_mutant_applies_to_todays_code():
    mutants = collect()
    assert len(mutants) > 200
    assert problems(mutants) == []

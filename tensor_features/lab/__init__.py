"""The lab wing: the plumbing the lessons share.

core (a lesson's checks, the code that ran, Try lines, the exit code), tries (`--tries`, `--try N`),
lessons (the teaching order and `make run`), distributed (running a lesson's observations on two
processes). A lesson imports what it uses from here: `from tensor_features.lab import Lab, Try`.
"""

from tensor_features.lab.core import Lab, Try

__all__ = ["Lab", "Try"]

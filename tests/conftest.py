"""pytest's fixtures, and which tests share a worker; the helpers the tests share are in
tests/support.py."""

from pathlib import Path

import pytest

from tensor_features.lab.core import Lab
from tests.support import DEVICES, quiet_lab


@pytest.fixture(params=DEVICES)
def lab(request) -> Lab:
    lab = quiet_lab(request.param)
    yield lab
    # Every lesson check must also agree inside the lesson itself.
    assert lab.failed == [], lab.stream.getvalue()


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (make test: -n 2 --dist loadgroup)
def pytest_collection_modifyitems(items) -> None:
    """In a file that sets GROUP_BY_LESSON, a test parametrized by a lesson's path goes to one
    worker with that lesson's other such tests: its terminal run (tests/lab/test_lessons.py) and
    its Try lines (tests/lab/test_tries.py) share one run of the unchanged lesson
    (tests/support.py, terminal_run). Every other test stays with its file, whose module fixtures
    (a Jupyter kernel, a baseline run) it shares: pytest tears those down when a worker's next test
    comes from another file."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        path = callspec.params.get("path") if callspec else None
        by_lesson = isinstance(path, Path) and getattr(item.module, "GROUP_BY_LESSON", False)
        group = f"lesson-{path.stem}" if by_lesson else f"file-{item.path.stem}"
        item.add_marker(pytest.mark.xdist_group(group))

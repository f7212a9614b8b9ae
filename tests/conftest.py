"""pytest's fixtures; the helpers the tests share are in tests/support.py."""

import os

import pytest

from tensor_features.lab.core import Lab
from tests.support import DEVICES, quiet_lab


@pytest.fixture(params=DEVICES)
def lab(request) -> Lab:
    lab = quiet_lab(request.param)
    yield lab
    # Every lesson check must also agree inside the lesson itself.
    assert lab.failed == [], lab.stream.getvalue()


@pytest.fixture(scope="session")
def shared_folder(tmp_path_factory):
    """A folder that every worker of this pytest run sees (pytest -n 2: the run's own temporary
    folder, above each worker's), where tests/support.py keeps each lesson's terminal run."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # set by pytest-xdist, one per run
    base = tmp_path_factory.getbasetemp()
    folder = base.parent / f"shared-{run}" if run else base / "shared"
    folder.mkdir(exist_ok=True)
    return folder

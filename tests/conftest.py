"""pytest's fixtures; the helpers the tests share are in tests/support.py."""

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
def shared_folder(request, tmp_path_factory):
    """A folder that every worker of this pytest run sees (pytest -n 2: the run's own temporary
    folder, above each worker's), where tests/support.py keeps each lesson's terminal run."""
    base = tmp_path_factory.getbasetemp()
    worker = getattr(request.config, "workerinput", None)  # only in an xdist worker of this run
    folder = base.parent / f"shared-{worker['testrunuid']}" if worker else base / "shared"
    folder.mkdir(exist_ok=True)
    return folder

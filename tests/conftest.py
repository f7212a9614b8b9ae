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

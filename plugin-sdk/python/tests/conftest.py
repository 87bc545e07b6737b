import pytest

from ovsb_plugin.testing import MockHost


@pytest.fixture(autouse=True)
def host():
    """A fresh mock host for every test."""
    return MockHost.fresh()

import pytest
from cope_helpers import make_problems, make_scripted


@pytest.fixture
def problems():
    return make_problems()


@pytest.fixture
def scripted():
    return make_scripted()

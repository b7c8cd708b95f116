import pytest

from zreward_diffusers.testing import TINY_FAMILIES


@pytest.fixture(params=TINY_FAMILIES)
def family(request):
    return request.param

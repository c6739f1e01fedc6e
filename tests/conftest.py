import pytest

from tests import comfy_host

comfy_host.import_comfy()


@pytest.fixture(scope="session")
def tiny_clip():
    return comfy_host.tiny_clip(seed=0)


@pytest.fixture
def tiny_flux():
    return comfy_host.tiny_flux(seed=0)

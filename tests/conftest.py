"""Fixtures shared by the layers that run on the real ComfyUI. The unit layer needs no ComfyUI: the
layers that do import it from their own conftest (`comfy_host.import_comfy()`), before anything else."""

import pytest

from tests import comfy_host


@pytest.fixture(scope="session")
def tiny_clip():
    return comfy_host.tiny_clip(seed=0)


@pytest.fixture
def tiny_flux():
    return comfy_host.tiny_flux(seed=0)

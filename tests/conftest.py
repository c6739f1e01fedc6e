"""Fixtures shared by the layers that run on the real ComfyUI. The unit layer needs no ComfyUI: the
layers that do import it from their own conftest (`comfy_host.import_comfy()`), before anything else.

With EA_NO_COMFY=1 in the environment, every ComfyUI module (and our adapter, which imports them) is
made unimportable, as on a Python without ComfyUI: tests/unit must pass like that."""

import importlib.abc
import os
import sys

import pytest

from tests import comfy_host

HOST_MODULES = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "nodes",
                "execution", "eraseanything_core.comfy")


class _NoComfy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == m or name.startswith(m + ".") for m in HOST_MODULES):
            raise ModuleNotFoundError(f"No module named {name!r} (EA_NO_COMFY: ComfyUI is absent)", name=name)
        return None


if os.environ.get("EA_NO_COMFY") == "1":
    sys.meta_path.insert(0, _NoComfy())


@pytest.fixture(scope="session")
def tiny_clip():
    return comfy_host.tiny_clip(seed=0)


@pytest.fixture
def tiny_flux():
    return comfy_host.tiny_flux(seed=0)

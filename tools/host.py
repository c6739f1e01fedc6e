"""Bootstrapping ComfyUI as a host for the tools and the tests: where the cached tree lives, importing it
on the CPU, and importing this pack the way ComfyUI does.

    from tools import host
    host.import_comfy()                       # before anything imports comfy
    inspect_runtime = host.import_pack_module("nodes.inspect_runtime")
"""

import importlib
import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("EA_CACHE", Path.home() / ".cache" / "eraseanything-comfyui"))
COMFY_DIR = Path(os.environ.get("EA_COMFY_DIR", CACHE / "comfyui"))
PACK_NAME = "eraseanything_pack_under_test"


def import_comfy():
    """Put ComfyUI on sys.path and select the CPU before model_management is imported."""
    if str(COMFY_DIR) not in sys.path:
        sys.path.insert(0, str(COMFY_DIR))
    if str(REPO) not in sys.path:  # appended: ComfyUI's own `nodes` module must stay ahead of our nodes/
        sys.path.append(str(REPO))
    from comfy.cli_args import args
    args.cpu = True
    import comfy.model_management  # noqa: F401  (reads args.cpu at import)
    import comfy.sd  # noqa: F401


def import_pack_module(submodule: str):
    """A module of this repo imported the way ComfyUI imports a custom node pack (a package by
    directory, relative imports inside), e.g. import_pack_module("nodes.apply_runtime")."""
    if PACK_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{PACK_NAME}.{submodule}")

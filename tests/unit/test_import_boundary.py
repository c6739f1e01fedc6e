"""The host boundary: no module of the core outside the adapter (eraseanything_core/comfy) imports
ComfyUI or the adapter, and tools/ imports nothing from tests/."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "eraseanything_core"
CORE_MODULES = sorted(
    ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__") for p in CORE.rglob("*.py")
    if "comfy" not in p.relative_to(CORE).parts)

# Imports each module in a fresh Python where ComfyUI's modules and the adapter cannot be found.
PROBE = """
import importlib, importlib.abc, sys
BLOCKED = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "nodes",
           "execution", "eraseanything_core.comfy")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == m or name.startswith(m + ".") for m in BLOCKED):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
sys.path.insert(0, sys.argv[1])
for name in sys.argv[2:]:
    importlib.import_module(name)
print("ok", len(sys.argv) - 2)
"""


def test_core_lists_the_modules_it_should():
    assert "eraseanything_core.trainer" in CORE_MODULES and "eraseanything_core.demo_world.scoring" in CORE_MODULES
    assert not [m for m in CORE_MODULES if m.startswith("eraseanything_core.comfy")]


def test_every_core_module_imports_without_comfyui():
    proc = subprocess.run([sys.executable, "-c", PROBE, str(REPO), *CORE_MODULES], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["ok", str(len(CORE_MODULES))]


def test_the_probe_would_notice_a_comfyui_import():
    proc = subprocess.run([sys.executable, "-c", PROBE, str(REPO), "eraseanything_core.comfy.flux"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr


@pytest.mark.parametrize("folder", ["tools", "eraseanything_core", "nodes"])
def test_shipped_code_imports_nothing_from_tests(folder):
    offenders = [str(p.relative_to(REPO)) for p in (REPO / folder).rglob("*.py")
                 if any(line.lstrip().startswith(("from tests", "import tests")) for line in p.read_text().splitlines())]
    assert not offenders

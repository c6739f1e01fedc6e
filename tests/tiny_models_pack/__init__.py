"""Test-only ComfyUI node pack: a loader for the tiny Flux + tiny CLIP of tests/comfy_host.py.

The server tests link this folder into a temporary custom_nodes/ so that workflows can run our nodes on
a model that builds in milliseconds on a CPU. Never ship it: it exists for tests/server and tests/browser.
Importing does nothing; tests/comfy_host.py is loaded by file path on first execute, because the server
imports packs by directory and tests/ is not on its sys.path.
"""

import importlib.util
import logging
from pathlib import Path

from comfy_api.latest import ComfyExtension, io

logger = logging.getLogger(__name__)

_COMFY_HOST_PATH = Path(__file__).resolve().parent.parent / "comfy_host.py"
_models_by_seed: dict[int, tuple] = {}


def _comfy_host():
    spec = importlib.util.spec_from_file_location("ea_tests_comfy_host", _COMFY_HOST_PATH)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load the test host helpers from {_COMFY_HOST_PATH}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TinyFluxLoader(io.ComfyNode):
    """Builds the seeded tiny Flux (hidden 64) and tiny Flux text encoders through ComfyUI's own loaders."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EATest_TinyFluxLoader",
            display_name="Tiny Flux Loader (EraseAnything tests)",
            category="EraseAnything/testing",
            description="Test-only: a random tiny Flux.1-dev (hidden 64, 2+2 blocks) and tiny T5 + CLIP-L.",
            inputs=[io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=False,
                                 tooltip="Seed of the random weights; the same seed gives the same models.")],
            outputs=[io.Model.Output(display_name="model", tooltip="The tiny Flux as a ModelPatcher."),
                     io.Clip.Output(display_name="clip", tooltip="Tiny T5 (width 32) + CLIP-L (pooled 16).")],
        )

    @classmethod
    def execute(cls, seed) -> io.NodeOutput:
        if seed not in _models_by_seed:
            host = _comfy_host()
            _models_by_seed[seed] = (host.tiny_flux(seed=seed), host.tiny_clip(seed=seed))
            logger.info("EATest_TinyFluxLoader: built tiny Flux + CLIP for seed %d", seed)
        model, clip = _models_by_seed[seed]
        return io.NodeOutput(model, clip)


class TinyModelsExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [TinyFluxLoader]


async def comfy_entrypoint() -> TinyModelsExtension:
    return TinyModelsExtension()

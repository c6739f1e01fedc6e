"""EraseAnything for ComfyUI: registers the nodes (V3 API) and the web extension. Importing does nothing else."""

from comfy_api.latest import ComfyExtension, io

WEB_DIRECTORY = "./web"


class EraseAnythingExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        from .nodes import NODES
        return NODES


async def comfy_entrypoint() -> EraseAnythingExtension:
    return EraseAnythingExtension()

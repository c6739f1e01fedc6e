"""EraseAnything for ComfyUI: registers the nodes (V3 API) and the web extension. Importing does nothing
else, and needs no ComfyUI (the test runner imports this package file while collecting tests/unit)."""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from comfy_api.latest import ComfyExtension

    class EraseAnythingExtension(ComfyExtension):
        async def get_node_list(self):
            from .nodes import NODES
            return NODES

    return EraseAnythingExtension()

from pathlib import Path

from comfy_api.latest import io

from .types import CATEGORY


class LoadDemoWorld(io.ComfyNode):
    """Loads the embedded demo world: a tiny FLUX.1 (ComfyUI's Flux classes) trained on 32x32 coloured shapes."""

    WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "models" / "demo_world"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EraseAnything_LoadDemoWorld",  # saved in workflows: never rename
            display_name="Load Demo World",
            category=CATEGORY,
            description="A tiny FLUX.1 trained on 32x32 pictures of circles, squares, triangles and crosses in "
                        "red, green, blue and yellow. Runs any Flux workflow on a CPU in seconds, so you can "
                        "watch an erasure happen before downloading FLUX.1.",
            inputs=[],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The demo Flux (hidden 128, 2+2 blocks). Prompts "
                                "like 'a red circle'; also knows 'disc', 'box', 'wedge', 'plus'. Use a 16x16 "
                                "latent: Empty SD3 Latent Image at 128x128, or VAE Encode of a 32x32 image."),
                io.Clip.Output(display_name="CLIP", tooltip="The demo world's T5 + CLIP-L pair behind ComfyUI's "
                               "Flux tokenizer; use with CLIP Text Encode. Prompts reach the image through the T5 tokens."),
                io.Vae.Output(display_name="VAE", tooltip="A lossless pixel-unshuffle VAE: a 32x32 image is a "
                              "16-channel 16x16 latent. Works with VAE Decode and VAE Encode."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        """Reload when the weight files change (e.g. after retraining): their paths, sizes and times."""
        files = sorted(cls.WEIGHTS_DIR.glob("*.safetensors"))
        return str(cls.WEIGHTS_DIR) + "".join(f"|{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)

    @classmethod
    def execute(cls) -> io.NodeOutput:
        from ..eraseanything_core.comfy.demo_world import load_world
        model, clip, vae = load_world(cls.WEIGHTS_DIR)
        return io.NodeOutput(model, clip, vae)

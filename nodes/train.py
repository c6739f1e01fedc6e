from comfy_api.latest import io

from .types import CATEGORY, ErasureLoRAType, ErasureOptionsType


def _lines(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in (text or "").splitlines() if line.strip())


class TrainErasureLoRA(io.ComfyNode):
    """Trains a small LoRA that removes one concept from a Flux model (EraseAnything, ICML 2025)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EraseAnything_TrainErasureLoRA",  # saved in workflows: never rename
            display_name="Train Erasure LoRA",
            category=CATEGORY,
            description="Trains a LoRA on the text-side query/key projections of Flux's double blocks so the "
                        "model stops drawing a concept, saves it to models/loras and returns the erased model.",
            is_output_node=True,  # writes a LoRA file
            inputs=[
                io.Model.Input("model", tooltip="A FLUX.1-dev or FLUX.1-schnell model."),
                io.Clip.Input("clip", tooltip="The Flux text encoders (T5-XXL + CLIP-L) used with this model."),
                io.String.Input("concept", default="", tooltip="The word or phrase to erase, e.g. 'nude', 'Van Gogh', 'parachute'."),
                io.String.Input("prompt", default="", multiline=True, optional=True, tooltip="A prompt that draws the concept. Empty: the concept itself."),
                io.String.Input("anchor", default="", multiline=True, optional=True, tooltip="What the concept should turn into (ESD anchor). Empty: the prompt without the concept words."),
                io.String.Input("synonyms", default="", multiline=True, optional=True, tooltip="Other words for the concept, one per line. Empty: automatic."),
                io.String.Input("irrelevant", default="", multiline=True, optional=True, tooltip="Unrelated concepts to keep intact, one per line. Empty: automatic (3 at graded distance)."),
                io.Int.Input("steps", default=200, min=1, max=10000, tooltip="Optimizer steps, alternating erase and preserve (paper: 200)."),
                io.Float.Input("learning_rate", default=0.001, min=0.0, max=1.0, step=0.0001, tooltip="AdamW learning rate, constant (paper: 1e-3)."),
                io.Int.Input("rank", default=8, min=1, max=128, tooltip="LoRA rank (alpha = rank). Paper: 8."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False, tooltip="Same seed, same inputs: the same LoRA."),
                io.Int.Input("resolution", default=512, min=16, max=2048, step=16, tooltip="Side in pixels of the concept images the model draws for training."),
                io.Int.Input("num_images", default=8, min=1, max=64, tooltip="Concept images sampled once from the frozen model."),
                io.String.Input("lora_name", default="erasure", tooltip="File name in models/loras (.safetensors is added; an existing file is never overwritten)."),
                io.Latent.Input("concept_latents", optional=True, tooltip="Optional: latents of the concept (e.g. VAE-encoded photos) used instead of sampling num_images from the model."),
                ErasureOptionsType.Input("options", optional=True, tooltip="Advanced settings from an Erasure Options node."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The input model with the erasure applied (strength 1)."),
                ErasureLoRAType.Output(display_name="lora", tooltip="The trained LoRA, for Apply Erasure LoRA without a file round trip."),
                io.String.Output(display_name="lora_file", tooltip="The file written under models/loras."),
                io.Image.Output(display_name="loss_curve", tooltip="Each loss term over the training steps."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, concept, steps, learning_rate, rank, seed, resolution, num_images, lora_name,
                prompt="", anchor="", synonyms="", irrelevant="", concept_latents=None, options=None) -> io.NodeOutput:
        from . import train_runtime
        from ..eraseanything_core.config import EraseConfig
        cfg = EraseConfig(concept=concept, prompt=prompt, anchor=anchor.strip() or None,
                          synonyms=_lines(synonyms), irrelevant=_lines(irrelevant), steps=steps,
                          learning_rate=learning_rate, rank=rank, seed=seed, resolution=resolution,
                          num_images=num_images, **(options or {}))
        latents = None if concept_latents is None else concept_latents["samples"]
        result = train_runtime.train_in_node(model, clip, cfg, lora_name, node_id=cls.hidden.unique_id, latents=latents)
        return io.NodeOutput(result.model, result.lora, result.file_name, result.loss_image)

from comfy_api.latest import io

from ..eraseanything_core.config import EraseConfig
from .schema import config_input, split_lines, split_list
from .types import CATEGORY, ErasureLoRAType, ErasureOptionsType


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
                config_input("concept"),
                config_input("prompt", optional=True),
                config_input("anchor", optional=True),
                config_input("synonyms", optional=True),
                config_input("irrelevant", optional=True),
                # inputs added later go last: saved workflows map widget values by position
                config_input("anchor_word", optional=True),
                config_input("keep", optional=True),
                config_input("steps"),
                config_input("learning_rate"),
                config_input("rank"),
                config_input("seed", control_after_generate=False),
                config_input("resolution"),
                config_input("num_images"),
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
    def validate_inputs(cls, concept=None, learning_rate=None, lora_name=None, prompt=None, anchor=None,
                        anchor_word=None):
        """At queue time, before anything runs: the checks of the values a typo can break (the integer
        inputs have ComfyUI's own range checks). Linked inputs are None here and are checked by
        EraseConfig when the node runs. ComfyUI repeats a refusal under each input named here."""
        from . import train_runtime
        try:
            if concept is not None:
                EraseConfig(concept=concept)
            if learning_rate is not None:
                EraseConfig(concept="x", learning_rate=learning_rate)
            if None not in (prompt, anchor, anchor_word):  # the anchor forms (one per line, or a word)
                EraseConfig(concept="x", prompt=prompt, anchor=anchor.strip() or None, anchor_word=anchor_word)
            if lora_name is not None:
                train_runtime.check_lora_name(lora_name)
        except ValueError as err:
            return str(err)
        return True

    @classmethod
    def execute(cls, model, clip, concept, steps, learning_rate, rank, seed, resolution, num_images, lora_name,
                prompt="", anchor="", anchor_word="", synonyms="", irrelevant="", keep="", concept_latents=None,
                options=None) -> io.NodeOutput:
        from . import train_runtime
        cfg = _config(concept, steps, learning_rate, rank, seed, resolution, num_images, prompt, anchor, synonyms,
                      irrelevant, options, anchor_word=anchor_word, keep=keep)
        latents = None if concept_latents is None else concept_latents["samples"]
        result = train_runtime.train_in_node(model, clip, cfg, lora_name, node_id=cls.hidden.unique_id, latents=latents)
        return io.NodeOutput(result.model, result.lora, result.file_name, result.loss_image,
                             ui={"text": [f"saved models/loras/{result.file_name}"]})


def _config(concept, steps, learning_rate, rank, seed, resolution, num_images, prompt="", anchor="", synonyms="",
            irrelevant="", options=None, anchor_word="", keep=""):
    return EraseConfig(concept=concept, prompt=prompt, anchor=anchor.strip() or None, anchor_word=anchor_word,
                       synonyms=split_list(synonyms), irrelevant=split_list(irrelevant), keep=split_lines(keep), steps=steps,
                       learning_rate=learning_rate, rank=rank, seed=seed, resolution=resolution,
                       num_images=num_images, **(options or {}))

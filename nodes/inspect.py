from comfy_api.latest import io

from .types import CATEGORY


class AttentionMapInspect(io.ComfyNode):
    """Shows where the image attends to each word of a prompt (text-to-image attention of Flux)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EraseAnything_AttentionMapInspect",  # saved in workflows: never rename
            display_name="Attention Map Inspect",
            category=CATEGORY,
            description="Captures Flux's text-to-image attention for chosen words while denoising a latent and "
                        "returns one heat map and one soft mask per word.",
            inputs=[
                io.Model.Input("model", tooltip="A Flux model, e.g. before or after an erasure."),
                io.Clip.Input("clip", tooltip="The Flux text encoders used with this model."),
                io.String.Input("prompt", default="", multiline=True, tooltip="The prompt whose words are inspected."),
                io.String.Input("words", default="", tooltip="Comma-separated words of the prompt to inspect, e.g. the concept a Train node erases (it must appear in the prompt). Empty: every word of the prompt."),
                io.Latent.Input("latent", optional=True, tooltip="A latent to inspect, e.g. a KSampler result. Or connect image + vae."),
                io.Image.Input("image", optional=True, tooltip="An image to inspect (needs vae)."),
                io.Vae.Input("vae", optional=True, tooltip="Encodes image when no latent is given."),
                io.String.Input("sigmas", default="0.9, 0.7, 0.5", tooltip="Noise levels (0..1) at which attention is read, comma-separated."),
                io.String.Input("blocks", default="-1", tooltip="Double-block indices, e.g. '-1' (last, as in the paper) or '10-18'."),
                io.Combo.Input("head_reduction", options=["mean", "max"], default="mean", tooltip="How the attention heads are combined."),
                io.Combo.Input("mode", options=["attention", "output_space"], default="attention", tooltip="attention: raw text-to-image softmax probabilities. output_space: ConceptAttention-style maps."),
                io.Boolean.Input("shared_scale", default=False, tooltip="One colour scale for all words instead of one per word."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False, tooltip="Seed of the noise added to the latent."),
            ],
            outputs=[
                io.Image.Output(display_name="maps", tooltip="A labelled heat-map overlay per word."),
                io.Mask.Output(display_name="masks", tooltip="One soft mask per word, in the latent's pixel size."),
                io.String.Output(display_name="attention_mass", tooltip="Share of the text attention each word receives."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, prompt=None, words=None, sigmas=None):
        """At queue time, before any node of the graph runs (a Train node upstream would otherwise train
        first). Linked inputs are None here and are checked when the node runs."""
        from . import inspect_runtime
        if prompt is None:
            return True
        try:
            inspect_runtime.check_text_inputs(prompt, words, sigmas)
        except ValueError as err:
            return str(err)
        return True

    @classmethod
    def execute(cls, model, clip, prompt, words, sigmas, blocks, head_reduction, mode, shared_scale, seed,
                latent=None, image=None, vae=None) -> io.NodeOutput:
        from . import inspect_runtime
        result = inspect_runtime.inspect(model, clip, prompt, words, latent=latent, image=image, vae=vae,
                                         sigmas=sigmas, blocks=blocks, head_reduction=head_reduction, mode=mode,
                                         shared_scale=shared_scale, seed=seed, node_id=cls.hidden.unique_id)
        return io.NodeOutput(result.grid, result.masks, result.report)

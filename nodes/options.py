from comfy_api.latest import io

from ..eraseanything_core.config import TARGET_GROUPS
from .types import CATEGORY, ErasureOptionsType


class ErasureOptions(io.ComfyNode):
    """Advanced settings for Train Erasure LoRA; leave it unconnected for the paper's defaults."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EraseAnything_ErasureOptions",  # saved in workflows: never rename
            display_name="Erasure Options (advanced)",
            category=CATEGORY,
            description="Loss weights, ESD guidance, LoRA targets and memory settings for Train Erasure LoRA.",
            inputs=[
                io.Float.Input("lambda_esd", default=1.0, min=0.0, max=100.0, step=0.01, tooltip="Weight of the ESD negative-guidance loss (Eq. 2)."),
                io.Float.Input("lambda_attn", default=0.001, min=0.0, max=10.0, step=0.0001, tooltip="Weight of the attention-attenuation loss on the concept tokens (Eq. 3)."),
                io.Float.Input("lambda_fm", default=0.1, min=0.0, max=10.0, step=0.01, tooltip="Weight of the flow-matching preservation loss (Eq. 4)."),
                io.Float.Input("lambda_rsc", default=0.0, min=0.0, max=10.0, step=0.01, tooltip="Weight of the reverse self-contrastive loss (Eq. 5). The released code's 0.1 stopped the erasure of two of three targets in our measurements (docs/method.md), so it is off by default."),
                io.Float.Input("lambda_preserve_irrelevant", default=1.0, min=0.0, max=10.0, step=0.01, tooltip="Weight of flow matching on one frozen sample per irrelevant concept (the paper's D_ir): keeps the other concepts. 0 = off (the released code)."),
                io.Float.Input("eta", default=1.0, min=0.0, max=10.0, step=0.1, tooltip="ESD negative guidance: how far past the anchor the concept is pushed."),
                io.Combo.Input("targets", options=list(TARGET_GROUPS), default="txt_qk", tooltip="Which projections get the LoRA. txt_qk is the paper's (text-side q/k of the double blocks)."),
                io.Combo.Input("reference", options=["frozen", "lora"], default="frozen", tooltip="ESD references from the frozen model (paper, ESD) or from the current LoRA model (released code)."),
                io.Combo.Input("esd_sampling", options=["cached", "resample"], default="cached", tooltip="cached: sample concept trajectories once (fast). resample: sample till t with the current model every erase step (original ESD, ~10x slower)."),
                io.Int.Input("erase_steps_per_preserve", default=1, min=1, max=16, tooltip="k erase steps before each preserve step (paper: 1)."),
                io.Boolean.Input("gradient_checkpointing", default=False, tooltip="Recompute each block in the backward pass: less VRAM, ~30% slower."),
                io.Combo.Input("lora_dtype", options=["float32", "bfloat16"], default="float32", tooltip="Trainable LoRA weights. bfloat16 matches the released code; float32 is more precise."),
            ],
            outputs=[ErasureOptionsType.Output(display_name="options", tooltip="Connect to the options input of Train Erasure LoRA.")],
        )

    @classmethod
    def execute(cls, targets, **options) -> io.NodeOutput:
        return io.NodeOutput({**options, "targets": (targets,)})


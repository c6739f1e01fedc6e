import folder_paths
from comfy_api.latest import io

from .types import CATEGORY, ErasureLoRAType


class ApplyErasureLoRA(io.ComfyNode):
    """Applies an erasure LoRA (ours, the released EraseAnything LoRA, or any PEFT/diffusers Flux LoRA)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EraseAnything_ApplyErasureLoRA",  # saved in workflows: never rename
            display_name="Apply Erasure LoRA",
            category=CATEGORY,
            description="Patches an erasure LoRA into a Flux model. Chain several to stack erasures.",
            inputs=[
                io.Model.Input("model", tooltip="The Flux model to erase from."),
                io.Combo.Input("lora_name", options=["(from input)"] + folder_paths.get_filename_list("loras"),
                               default="(from input)", tooltip="A LoRA file in models/loras, or '(from input)' to use the lora input."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01, tooltip="1 erases as trained; 0 is a no-op; negative values amplify the concept."),
                ErasureLoRAType.Input("lora", optional=True, tooltip="A LoRA straight from Train Erasure LoRA."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model with the LoRA patched into its weights."),
                io.String.Output(display_name="info", tooltip="The erased concept and training settings from the file's metadata."),
            ],
        )

    @classmethod
    def validate_inputs(cls, strength=None):
        from . import apply_runtime
        try:
            apply_runtime.check_strength(strength)
        except ValueError as err:
            return str(err)
        return True

    @classmethod
    def execute(cls, model, lora_name, strength, lora=None) -> io.NodeOutput:
        from . import apply_runtime
        patched, info = apply_runtime.apply(model, lora_name, strength, lora)
        return io.NodeOutput(patched, info)

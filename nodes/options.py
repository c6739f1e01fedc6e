from comfy_api.latest import io

from ..eraseanything_core.config import EraseConfig
from .schema import config_input
from .types import CATEGORY, ErasureOptionsType


class ErasureOptions(io.ComfyNode):
    """Advanced settings for Train Erasure LoRA; leave it unconnected for the default preset."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EraseAnything_ErasureOptions",  # saved in workflows: never rename
            display_name="Erasure Options (advanced)",
            category=CATEGORY,
            description="A preset (default, or the paper's weights) and the loss weights, ESD guidance, LoRA targets "
                        "and memory settings of Train Erasure LoRA. A setting left at its default takes the "
                        "preset's value.",
            inputs=[
                config_input("lambda_esd"),
                config_input("lambda_attn"),
                config_input("lambda_fm"),
                config_input("lambda_rsc"),
                config_input("lambda_preserve_irrelevant"),
                config_input("eta"),
                config_input("targets"),
                config_input("reference"),
                config_input("esd_sampling"),
                config_input("erase_steps_per_preserve"),
                config_input("gradient_checkpointing"),
                config_input("lora_dtype"),
                # inputs added later go last: saved workflows map widget values by position
                config_input("preset"),
                config_input("lambda_retain"),
                config_input("sigma_schedule"),
            ],
            outputs=[ErasureOptionsType.Output(display_name="options", tooltip="Connect to the options input of Train Erasure LoRA.")],
        )

    @classmethod
    def validate_inputs(cls, lambda_esd=None, lambda_attn=None, lambda_fm=None, lambda_rsc=None,
                        lambda_retain=None, lambda_preserve_irrelevant=None, eta=None):
        """At queue time: the float inputs, which ComfyUI's own range check lets through when NaN."""
        given = {k: v for k, v in dict(lambda_esd=lambda_esd, lambda_attn=lambda_attn, lambda_fm=lambda_fm,
                                       lambda_rsc=lambda_rsc, lambda_retain=lambda_retain,
                                       lambda_preserve_irrelevant=lambda_preserve_irrelevant,
                                       eta=eta).items() if v is not None}
        try:
            EraseConfig(concept="x", **given)
        except ValueError as err:
            return str(err)
        return True

    @classmethod
    def execute(cls, targets, **options) -> io.NodeOutput:
        return io.NodeOutput({**options, "targets": tuple(targets.split("+"))})


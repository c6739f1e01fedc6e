"""Custom socket types shared by our nodes."""

from comfy_api.latest import io

# {"state_dict": {peft key: tensor}, "metadata": {str: str}}: a LoRA in memory, no file round trip.
ErasureLoRAType = io.Custom("ERASURE_LORA")
# dict of EraseConfig overrides from the Erasure Options node.
ErasureOptionsType = io.Custom("ERASURE_OPTIONS")

CATEGORY = "EraseAnything"

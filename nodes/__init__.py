"""Thin ComfyUI adapters: schemas, validation, progress and UI output. The maths is in eraseanything_core."""

from .apply import ApplyErasureLoRA
from .demo_world import LoadDemoWorld
from .inspect import AttentionMapInspect
from .options import ErasureOptions
from .train import TrainErasureLoRA

NODES = [TrainErasureLoRA, ErasureOptions, AttentionMapInspect, ApplyErasureLoRA, LoadDemoWorld]

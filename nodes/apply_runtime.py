"""What Apply Erasure LoRA does: load (file or in-graph), check that it fits the model, patch it in."""

import logging
import math

import comfy.lora
import comfy.sd
import folder_paths

from ..eraseanything_core import lora_file

log = logging.getLogger(__name__)

FROM_INPUT = "(from input)"
_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_A", ".lora_B", ".alpha",
                  ".lora_down.weight", ".lora_up.weight", ".lora_mid.weight")


class LoRAMismatchError(ValueError):
    pass


def _module_name(key: str) -> str:
    for suffix in _LORA_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def check_fits(model, state_dict: dict) -> None:
    """Every LoRA key must name a module of this model, with the model's width: ComfyUI itself would
    only log 'lora key not loaded' and silently apply the rest."""
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    modules = sorted({_module_name(k) for k in state_dict})
    model_sd = model.model.state_dict()
    for m in (m for m in modules if m in key_map):  # a width mismatch is the more basic error: report it first
        target = key_map[m]
        weight_key, offset = (target[0], target[1]) if isinstance(target, tuple) else (target, None)
        weight = model_sd[weight_key]
        rows = offset[2] if offset is not None else weight.shape[0]
        a, b = state_dict.get(f"{m}.lora_A.weight"), state_dict.get(f"{m}.lora_B.weight")
        if a is not None and b is not None and (a.shape[1] != weight.shape[1] or b.shape[0] != rows):
            raise LoRAMismatchError(
                f"LoRA module {m} is {b.shape[0]}x{a.shape[1]} but the model's {weight_key} slice is "
                f"{rows}x{weight.shape[1]}: the LoRA was trained for a different model width.")
    unknown = [m for m in modules if m not in key_map]
    if unknown:
        raise LoRAMismatchError(
            f"{len(unknown)} of {len(modules)} LoRA modules do not exist in this model, e.g. {unknown[:3]}. "
            "Is this a Flux LoRA, and for the same Flux variant (number of blocks)?")


def load(lora_name: str, lora_input) -> tuple[dict, dict]:
    if lora_name == FROM_INPUT:
        if lora_input is None:
            raise ValueError("Apply Erasure LoRA: pick a file in lora_name or connect the lora input "
                             "(from Train Erasure LoRA).")
        return lora_input["state_dict"], lora_input.get("metadata", {})
    path = folder_paths.get_full_path("loras", lora_name)
    if path is None:
        raise FileNotFoundError(f"LoRA {lora_name!r} is not in models/loras; refresh the node list.")
    state_dict, metadata = lora_file.load_lora_file(path)
    return state_dict, metadata


STRENGTH_MIN, STRENGTH_MAX = -10.0, 10.0


def check_strength(strength):
    """None (a linked input, checked when the node runs) or a finite number in the widget's range."""
    if strength is None:
        return
    if not math.isfinite(strength):
        raise ValueError(f"strength must be a finite number, got {strength}: 1 erases as trained, 0 does nothing.")
    if not STRENGTH_MIN <= strength <= STRENGTH_MAX:
        raise ValueError(f"strength must be between {STRENGTH_MIN} and {STRENGTH_MAX}, got {strength}.")


def apply(model, lora_name: str, strength: float, lora_input=None):
    check_strength(strength)
    state_dict, metadata = load(lora_name, lora_input)
    check_fits(model, state_dict)
    patched, _ = comfy.sd.load_lora_for_models(model, None, state_dict, strength, 0)
    info = lora_file.describe_metadata(metadata) if metadata else "no metadata"
    return patched, info

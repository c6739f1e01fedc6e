"""The default preset (several prompt lines, per-line anchors, retain-set distillation) is deterministic:
the same seed and inputs give a bit-identical LoRA, run after run, and the one this code produced when the
retain set landed (tests/fixtures/lora_retain_default.safetensors: a refactor must not change it; matched
within float32 kernel differences across CPUs, flux_fixtures.assert_same_lora)."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from eraseanything_core.comfy.flux import build_runner
from eraseanything_core.comfy.text import ClipText
from eraseanything_core.config import EraseConfig
from eraseanything_core.lora_file import peft_state_dict
from eraseanything_core.trainer import train_erasure
from tests import comfy_host
from tests.integration.flux_fixtures import COMMITTED_LORA_ATOL, assert_same_lora

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "lora_retain_default.safetensors"
CFG = dict(concept="nude", prompt="a nude girl with beautiful hair\na nude man on a beach", anchor_word="clothed",
           keep=("a portrait of a woman",), steps=12, rank=4, seed=5, resolution=32, num_images=2, sample_steps=6,
           prompt_variants=4, learning_rate=1e-2, synonyms=("naked",), irrelevant=("car", "tree"))


def train(tiny_clip, **changes) -> tuple[dict, object]:
    cfg = EraseConfig(**{**CFG, **changes})
    runner = build_runner(comfy_host.tiny_flux(seed=0), cfg)
    result = train_erasure(cfg, runner, ClipText(tiny_clip))
    return peft_state_dict(runner.lora, torch.float32), result


def test_same_seed_same_lora_and_the_one_committed(tiny_clip):
    first, result = train(tiny_clip)
    second, _ = train(tiny_clip)
    assert result.concepts.anchors == ("a clothed girl with beautiful hair", "a clothed man on a beach")
    assert "a portrait of a woman" in result.concepts.retain and len(result.concepts.retain) == 2 * 2 + 2 + 1
    assert "retain" in result.history[1]
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert_same_lora(first, load_file(FIXTURE), "the committed default LoRA")
    other, _ = train(tiny_clip, seed=6)
    assert max((first[k] - other[k]).abs().max().item() for k in first) > 100 * COMMITTED_LORA_ATOL

"""The host-boundary refactor changed where code lives, not what it computes: the same seed and inputs
give the LoRA main produced before it (commit 859a4bd): bit-identical on the machine that wrote the
fixture, within float32 kernel differences on another CPU (flux_fixtures.assert_same_lora).

tests/fixtures/lora_main_859a4bd.safetensors holds the LoRAs that commit trained here for each case
below (keys "<case>/<PEFT key>"), on the seed-0 tiny Flux and tiny CLIP of tests/comfy_host.py, through
what Train Erasure LoRA called then (its LoRA builder, FluxRunner, train_erasure, peft_state_dict)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eraseanything_core.comfy.flux import build_runner
from eraseanything_core.comfy.text import ClipText
from eraseanything_core.config import EraseConfig
from eraseanything_core.lora_file import peft_state_dict
from eraseanything_core.trainer import train_erasure
from tests import comfy_host
from tests.integration.flux_fixtures import assert_same_lora

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "lora_main_859a4bd.safetensors"
BASE = dict(concept="nude", prompt="a nude girl with beautiful hair", steps=12, rank=4, seed=5,
            resolution=32, num_images=2, sample_steps=6, prompt_variants=3, learning_rate=1e-2,
            synonyms=("naked",), irrelevant=("car", "tree", "mountain"))
# Each case spells out 859a4bd's settings where today's defaults differ (no retain set then).
OLD_DEFAULTS = dict(lambda_fm=0.1, lambda_retain=0.0, rsc_feature="head_mean")
CASES = {
    "default": dict(OLD_DEFAULTS, lambda_preserve_irrelevant=1.0),  # 859a4bd's default: D_ir on, Eq. 5 off
    "rsc_k2": dict(OLD_DEFAULTS, lambda_rsc=0.1, erase_steps_per_preserve=2, lambda_preserve_irrelevant=0.0),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_seed_gives_the_lora_main_gave_before_the_refactor(case, tiny_clip):
    cfg = EraseConfig(**{**BASE, **CASES[case]})
    runner = build_runner(comfy_host.tiny_flux(seed=0), cfg)
    train_erasure(cfg, runner, ClipText(tiny_clip))
    ours = peft_state_dict(runner.lora, torch.float32)
    before = {k.split("/", 1)[1]: v for k, v in load_file(FIXTURE).items() if k.startswith(f"{case}/")}
    assert_same_lora(ours, before, f"case {case}")
    assert any(v.abs().sum() > 0 for k, v in ours.items() if "lora_B" in k), "the run must have trained"

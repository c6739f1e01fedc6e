import pytest
import torch

from eraseanything_core.config import EraseConfig
from eraseanything_core.lora import ErasureLoRA, flux_targets


def test_paper_targets_are_text_q_and_k_rows_of_every_double_block():
    targets = flux_targets(("txt_qk",), hidden=64, depth=3, depth_single=2)
    assert [(t.peft_name.split(".")[2], t.peft_name.split(".")[-1], t.weight_key, t.row_start, t.row_len) for t in targets] == [
        (str(i), proj, f"double_blocks.{i}.txt_attn.qkv.weight", start, 64)
        for i in range(3) for proj, start in (("add_q_proj", 0), ("add_k_proj", 64))]


def test_all_attn_covers_both_streams_and_single_blocks():
    names = {t.peft_name for t in flux_targets(("all_attn",), hidden=8, depth=1, depth_single=1)}
    assert {"transformer.transformer_blocks.0.attn.to_v", "transformer.transformer_blocks.0.attn.add_v_proj",
            "transformer.single_transformer_blocks.0.attn.to_k"} <= names
    assert len(names) == 6 + 3


def test_init_is_gaussian_a_zero_b_and_identity_wrapper():
    targets = flux_targets(("txt_qk",), hidden=32, depth=2, depth_single=0)
    lora = ErasureLoRA(targets, rank=8, generator=torch.Generator().manual_seed(0))
    a = torch.cat([p.flatten() for p in lora.lora_A])
    assert a.std().item() == pytest.approx(1 / 8, rel=0.1)
    assert all((b == 0).all() for b in lora.lora_B)
    w = torch.randn(96, 32)
    assert torch.equal(lora.wrapper(targets[0].weight_key)(w), w)


def test_wrapper_adds_delta_to_its_row_slice_only_and_switches_off():
    targets = flux_targets(("txt_qk",), hidden=4, depth=1, depth_single=0)
    lora = ErasureLoRA(targets, rank=2, alpha=4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        for b in lora.lora_B:
            b.normal_()
    w = torch.randn(12, 4, dtype=torch.float64)
    out = lora.wrapper(targets[0].weight_key)(w)
    scale = 4 / 2
    assert torch.allclose(out[0:4], w[0:4] + scale * lora.lora_B[0] @ lora.lora_A[0])
    assert torch.allclose(out[4:8], w[4:8] + scale * lora.lora_B[1] @ lora.lora_A[1])
    assert torch.equal(out[8:12], w[8:12])  # values untouched
    with lora.disabled():
        assert lora.wrapper(targets[0].weight_key)(w) is w
    assert lora.enabled


def test_config_rejects_bad_input_with_actionable_messages():
    with pytest.raises(ValueError, match="concept is empty"):
        EraseConfig(concept="  ")
    with pytest.raises(ValueError, match="targets: .nope. is not one of"):
        EraseConfig(concept="cat", targets=("nope",))
    with pytest.raises(ValueError, match="resolution"):
        EraseConfig(concept="cat", resolution=500)
    assert EraseConfig(concept="cat").concept_prompt == "cat"

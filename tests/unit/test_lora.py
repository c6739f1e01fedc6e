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
    assert EraseConfig(concept="cat").concept_prompts[0] == "cat"


@pytest.mark.parametrize("group, expected", [
    ("txt_v", [("transformer.transformer_blocks.0.attn.add_v_proj", "double_blocks.0.txt_attn.qkv.weight", 16, 8, 8)]),
    ("img_qkv", [("transformer.transformer_blocks.0.attn.to_q", "double_blocks.0.img_attn.qkv.weight", 0, 8, 8),
                 ("transformer.transformer_blocks.0.attn.to_k", "double_blocks.0.img_attn.qkv.weight", 8, 8, 8),
                 ("transformer.transformer_blocks.0.attn.to_v", "double_blocks.0.img_attn.qkv.weight", 16, 8, 8)]),
    ("single_qk", [("transformer.single_transformer_blocks.0.attn.to_q", "single_blocks.0.linear1.weight", 0, 8, 8),
                   ("transformer.single_transformer_blocks.0.attn.to_k", "single_blocks.0.linear1.weight", 8, 8, 8)]),
    ("vector_in", [("transformer.time_text_embed.text_embedder.linear_1", "vector_in.in_layer.weight", 0, 8, 5),
                   ("transformer.time_text_embed.text_embedder.linear_2", "vector_in.out_layer.weight", 0, 8, 8)]),
])
def test_each_target_group_names_its_weights_and_rows(group, expected):
    """(PEFT name, weight key, first row, rows, fan-in) on a hidden-8 Flux with 1 double + 1 single block and a
    pooled width of 5: the diffusers names the file stores and the BFL-layout rows they update."""
    got = [(t.peft_name, t.weight_key, t.row_start, t.row_len, t.in_features)
           for t in flux_targets((group,), hidden=8, depth=1, depth_single=1, vec_in_dim=5)]
    assert got == expected


def test_vector_in_needs_a_pooled_input():
    with pytest.raises(ValueError, match="vec_in_dim"):
        flux_targets(("vector_in",), hidden=8, depth=1, depth_single=0)

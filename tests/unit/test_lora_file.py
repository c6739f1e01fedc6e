"""LoRA file format: PEFT keys, safe names, atomic no-overwrite writes, safe loading, metadata."""

import os

import pytest
import torch
from safetensors.torch import load_file

from eraseanything_core import lora_file
from eraseanything_core.config import EraseConfig
from eraseanything_core.lora import ErasureLoRA, flux_targets
from eraseanything_core.lora_file import (describe_metadata, load_lora_file, model_fingerprint, peft_state_dict,
                                          provenance, safe_lora_path, save_lora_file)

HIDDEN, DEPTH, DEPTH_SINGLE = 64, 2, 2


def make_lora(groups=("txt_qk",), rank=4, alpha=2.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lora = ErasureLoRA(flux_targets(groups, HIDDEN, DEPTH, DEPTH_SINGLE), rank=rank, alpha=alpha, generator=gen)
    with torch.no_grad():
        for b in lora.lora_B:
            b.copy_(torch.randn(b.shape, generator=gen))
    return lora


def folder_files(folder):
    return sorted(p.name for p in folder.iterdir())


# ---- peft_state_dict ------------------------------------------------------------------------------

def test_peft_state_dict_has_a_and_b_per_target_with_scale_folded_into_b():
    lora = make_lora(rank=4, alpha=2.0)                       # scale 0.5
    sd = peft_state_dict(lora, dtype=torch.float32)
    assert len(sd) == 2 * len(lora.targets) == 2 * 2 * DEPTH  # add_q + add_k per double block
    for i, t in enumerate(lora.targets):
        a, b = sd[f"{t.peft_name}.lora_A.weight"], sd[f"{t.peft_name}.lora_B.weight"]
        assert a.shape == (4, HIDDEN) and b.shape == (t.row_len, 4)
        assert a.is_contiguous() and b.is_contiguous() and a.device.type == "cpu"
        torch.testing.assert_close(b @ a, lora.delta(i).detach(), rtol=1e-6, atol=1e-6)
    assert not [k for k in sd if "alpha" in k or not k.startswith("transformer.")]
    # substrings that make diffusers pick a non-PEFT converter
    assert not [k for k in sd if any(s in k for s in ("lora_down", "processor", "query_norm", "base_model"))]


def test_peft_state_dict_defaults_to_bf16_copies_that_do_not_follow_training():
    lora = make_lora()
    sd = peft_state_dict(lora)
    assert {t.dtype for t in sd.values()} == {torch.bfloat16}
    key = f"{lora.targets[0].peft_name}.lora_A.weight"
    before = sd[key].clone()
    with torch.no_grad():
        lora.lora_A[0].add_(1.0)
    assert torch.equal(sd[key], before)


def test_peft_state_dict_keys_for_all_attn():
    sd = peft_state_dict(make_lora(("all_attn",)))
    names = {k.rsplit(".lora_", 1)[0] for k in sd}
    expected = {f"transformer.transformer_blocks.{i}.attn.{m}" for i in range(DEPTH)
                for m in ("add_q_proj", "add_k_proj", "add_v_proj", "to_q", "to_k", "to_v")}
    expected |= {f"transformer.single_transformer_blocks.{i}.attn.{m}" for i in range(DEPTH_SINGLE)
                 for m in ("to_q", "to_k", "to_v")}
    assert names == expected


# ---- safe_lora_path -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../x", "../../etc/passwd", "/abs", "/abs.safetensors", "a/b", "a\\b", "C:x",
                                  "..", ".", ".hidden", "", "   ", "nul\x00", "x\ny", "nul", "CON.safetensors",
                                  "x" * 300])
def test_safe_lora_path_rejects_names_that_escape_or_hide(tmp_path, name):
    with pytest.raises(ValueError, match="file name"):
        safe_lora_path(tmp_path, name)


def test_safe_lora_path_appends_extension_and_stays_in_folder(tmp_path):
    assert safe_lora_path(tmp_path, "erase_nudity") == tmp_path.resolve() / "erase_nudity.safetensors"
    assert safe_lora_path(tmp_path, " van gogh.safetensors ") == tmp_path.resolve() / "van gogh.safetensors"
    assert safe_lora_path(tmp_path, "v1.2") == tmp_path.resolve() / "v1.2.safetensors"


def test_safe_lora_path_rejects_a_symlink_that_leads_outside(tmp_path):
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "evil.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(ValueError, match="outside"):
        safe_lora_path(tmp_path / "loras", "evil")


def test_error_message_says_what_to_type(tmp_path):
    with pytest.raises(ValueError, match="Type a plain file name such as 'erase_van_gogh'"):
        safe_lora_path(tmp_path, "../x")


# ---- save_lora_file / load_lora_file --------------------------------------------------------------

def test_save_then_load_round_trips_tensors_and_metadata(tmp_path):
    sd = peft_state_dict(make_lora())
    cfg = EraseConfig(concept="nudity", anchor="a person", steps=3, seed=7)
    path = save_lora_file(sd, tmp_path, "erase", {"config": cfg.to_metadata(), "base_model": "0123abcd"})
    assert path == tmp_path.resolve() / "erase.safetensors"
    loaded, metadata = load_lora_file(path)
    assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)
    assert metadata["format"] == "pt"
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    assert set(metadata) == {"format", "eraseanything.version", "eraseanything.config", "eraseanything.base_model"}
    info = provenance(metadata)
    assert info["config"] == {**cfg.to_metadata(), "synonyms": [], "irrelevant": [], "keep": [], "targets": ["txt_qk"],
                              "attn_blocks": [-1]}                       # JSON turns tuples into lists
    assert info["version"] == lora_file.__version__ and info["base_model"] == "0123abcd"


def test_save_never_overwrites_an_existing_file(tmp_path):
    first = save_lora_file({"a.lora_A.weight": torch.zeros(2, 3)}, tmp_path, "erase", {})
    second = save_lora_file({"a.lora_A.weight": torch.ones(2, 3)}, tmp_path, "erase.safetensors", {})
    third = save_lora_file({"a.lora_A.weight": torch.ones(2, 3)}, tmp_path, "erase", {})
    assert [p.name for p in (first, second, third)] == ["erase.safetensors", "erase_2.safetensors", "erase_3.safetensors"]
    assert torch.equal(load_file(first)["a.lora_A.weight"], torch.zeros(2, 3))
    assert folder_files(tmp_path) == ["erase.safetensors", "erase_2.safetensors", "erase_3.safetensors"]


def test_temp_file_is_hidden_from_comfyui_lora_list(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(lora_file.os, "replace", spy)
    save_lora_file({"a.lora_A.weight": torch.ones(2, 3)}, tmp_path, "erase", {})
    assert len(seen) == 1 and seen[0].startswith(".") and not seen[0].endswith(".safetensors")


@pytest.mark.skipif(os.name != "posix", reason="file modes and umask are POSIX")
def test_saved_file_gets_the_usual_permissions_not_a_private_temp_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_lora_file({"a.lora_A.weight": torch.ones(2, 3)}, tmp_path, "erase", {})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("failing", ["safetensors_bytes", "fsync", "replace"])
def test_failed_write_leaves_no_file_behind(tmp_path, monkeypatch, failing):
    def boom(*args, **kwargs):
        raise OSError(f"simulated {failing} failure")

    target = lora_file if failing == "safetensors_bytes" else lora_file.os
    monkeypatch.setattr(target, failing, boom)
    with pytest.raises(OSError, match="simulated"):
        save_lora_file({"a.lora_A.weight": torch.ones(2, 3)}, tmp_path, "erase", {})
    assert folder_files(tmp_path) == []


def test_save_rejects_empty_state_dict_and_non_json_metadata(tmp_path):
    with pytest.raises(ValueError, match="no tensors"):
        save_lora_file({}, tmp_path, "erase", {})
    with pytest.raises(ValueError, match="metadata\\['dtype'\\]"):
        save_lora_file({"a.lora_A.weight": torch.ones(1)}, tmp_path, "erase", {"dtype": torch.float32})
    assert folder_files(tmp_path) == []


@pytest.mark.parametrize("suffix", [".pt", ".ckpt", ".bin", ".pth", ""])
def test_load_refuses_pickle_extensions_without_unpickling(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"lora{suffix}"
    torch.save({"a": torch.ones(2)}, path)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must never be called"))
    with pytest.raises(ValueError, match="only .safetensors"):
        load_lora_file(path)


def test_load_refuses_a_pickle_renamed_to_safetensors(tmp_path, monkeypatch):
    path = tmp_path / "renamed.safetensors"
    torch.save({"a": torch.ones(2)}, path)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must never be called"))
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_lora_file(path)


@pytest.mark.parametrize("keep", [0.5, 0.99, 8 / 1e9])
def test_load_refuses_a_truncated_file(tmp_path, keep):
    path = save_lora_file(peft_state_dict(make_lora()), tmp_path, "full", {})
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: max(1, int(len(data) * keep))])
    with pytest.raises(ValueError, match="cut.safetensors is not a valid safetensors file"):
        load_lora_file(cut)


def test_load_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_lora_file(tmp_path / "nope.safetensors")


# ---- describe_metadata ----------------------------------------------------------------------------

def test_describe_metadata_of_our_file(tmp_path):
    cfg = EraseConfig(concept="nudity", anchor="a person", steps=200, seed=3, rank=8)
    path = save_lora_file({"a.lora_A.weight": torch.ones(1)}, tmp_path, "x",
                          {"config": cfg.to_metadata(), "base_model": "0123abcd"})
    text = describe_metadata(load_lora_file(path)[1])
    for part in ("erases 'nudity'", "anchor 'a person'", "200 steps", "seed 3", "rank 8", "txt_qk", "0123abcd",
                 f"EraseAnything {lora_file.__version__}"):
        assert part in text


def test_describe_metadata_tolerates_foreign_and_damaged_metadata():
    assert describe_metadata({"format": "pt"}) == "no EraseAnything metadata (format: pt)"
    assert describe_metadata({}) == "no EraseAnything metadata (format: unknown)"
    assert "erases" not in describe_metadata({"eraseanything.config": "{not json", "eraseanything.version": "0.0.9"})
    assert "0.0.9" in describe_metadata({"eraseanything.config": "[1, 2]", "eraseanything.version": "0.0.9"})


# ---- model_fingerprint ----------------------------------------------------------------------------

def test_model_fingerprint_is_stable_short_and_sensitive():
    gen = torch.Generator().manual_seed(0)
    sd = {"a.weight": torch.randn(300, 70, generator=gen), "b.bias": torch.randn(5, generator=gen)}
    fp = model_fingerprint(sd.items())
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert model_fingerprint(reversed(list(sd.items()))) == fp                      # order-free
    assert model_fingerprint({k: v.clone() for k, v in sd.items()}.items()) == fp
    changed_value = {**sd, "a.weight": sd["a.weight"].clone().index_put_((torch.tensor(0), torch.tensor(0)),
                                                                         torch.tensor(9.0))}
    changed_dtype = {**sd, "b.bias": sd["b.bias"].bfloat16()}
    changed_shape = {**sd, "a.weight": sd["a.weight"].reshape(70, 300)}
    renamed = {"c.weight": sd["a.weight"], "b.bias": sd["b.bias"]}
    others = [model_fingerprint(d.items()) for d in (changed_value, changed_dtype, changed_shape, renamed)]
    assert len({fp, *others}) == 5


def test_model_fingerprint_reads_only_a_strided_sample():
    big = torch.zeros(10_000)
    fp = model_fingerprint([("w", big)], samples_per_tensor=100)                  # stride 100
    assert model_fingerprint([("w", big.clone().index_fill_(0, torch.tensor([1]), 5.0))], 100) == fp
    assert model_fingerprint([("w", big.clone().index_fill_(0, torch.tensor([100]), 5.0))], 100) != fp

"""Our LoRA files in the real hosts: ComfyUI's stock loader and diffusers' Flux loader apply exactly our
delta W, on exactly the intended rows; and the released EraseAnything LoRA maps onto ComfyUI's Flux.

ComfyUI runs in-process on the CPU (tests/conftest.py). Loads happen under `torch.inference_mode()`,
as in the executor.
"""

import logging
from pathlib import Path

import pytest
import torch

from eraseanything_core.lora import ErasureLoRA, flux_targets
from eraseanything_core.lora_file import describe_metadata, load_lora_file, peft_state_dict, save_lora_file
from tests import comfy_host
from tests.comfy_host import TINY_FLUX

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures"
OFFICIAL = FIXTURES / "eraseanything-official-nudity-lora.safetensors"
needs_official = pytest.mark.skipif(
    not OFFICIAL.is_file(),
    reason=f"released EraseAnything LoRA not found at {OFFICIAL.resolve()} (see shared/fixtures/README.md)")

H = TINY_FLUX["hidden"]
NOT_LOADED = ("lora key not loaded", "NOT LOADED")
FULL_FLUX = dict(image_model="flux", in_channels=16, patch_size=2, out_channels=16, vec_in_dim=768,
                 context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19,
                 depth_single_blocks=38, axes_dim=[16, 56, 56], theta=10000, qkv_bias=True, guidance_embed=True)


@pytest.fixture
def loras_dir(tmp_path, monkeypatch):
    """A temporary models/loras that ComfyUI's LoRA list and loaders search."""
    import folder_paths
    folder = tmp_path / "loras"
    folder.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(folder)], folder_paths.supported_pt_extensions))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return folder


@pytest.fixture
def unload_models():
    import comfy.model_management
    yield
    comfy.model_management.unload_all_models()  # restores the weights that load_models_gpu patched


def random_lora(groups, seed=0, rank=4, alpha=8.0):
    """Tiny-Flux targets with random non-zero B; alpha/r = 2 so a lost scale would show."""
    gen = torch.Generator().manual_seed(seed)
    d = TINY_FLUX
    lora = ErasureLoRA(flux_targets(groups, H, d["depth"], d["depth_single"], d["vec"]), rank=rank, alpha=alpha,
                       generator=gen)
    with torch.no_grad():
        for b in lora.lora_B:
            b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
    return lora


def stock_load_and_patch(model, lora_name):
    """LoraLoaderModelOnly as a workflow runs it, then the patched weights of the diffusion model."""
    import comfy.model_management
    import nodes
    with torch.inference_mode():
        (patched,) = nodes.LoraLoaderModelOnly().load_lora_model_only(model, lora_name, 1.0)
        comfy.model_management.load_models_gpu([patched])
        weights = {k: v.clone() for k, v in patched.model.diffusion_model.state_dict().items()}
    return patched, weights


def file_delta(state_dict, peft_name):
    """B @ A of one target as read back from the file, in float32: (row_len, in)."""
    return state_dict[f"{peft_name}.lora_B.weight"].float() @ state_dict[f"{peft_name}.lora_A.weight"].float()


def assert_no_unloaded_keys(caplog):
    messages = [r.getMessage() for r in caplog.records if any(s in r.getMessage() for s in NOT_LOADED)]
    assert not messages, messages[:5]


# ---- ComfyUI's stock loader ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("groups", [("txt_qk",), ("all_attn",)], ids=["txt_qk", "all_attn"])
def test_stock_loader_adds_exactly_our_delta_to_each_row_slice(tiny_flux, loras_dir, unload_models, caplog,
                                                               groups, dtype):
    import folder_paths
    lora = random_lora(groups)
    path = save_lora_file(peft_state_dict(lora, dtype=dtype), loras_dir, "erase", {"config": {"concept": "x"}})
    assert path.name in folder_paths.get_filename_list("loras")
    base = {k: v.clone() for k, v in tiny_flux.model.diffusion_model.state_dict().items()}

    caplog.set_level(logging.WARNING)
    patched, weights = stock_load_and_patch(tiny_flux, path.name)
    assert_no_unloaded_keys(caplog)
    assert set(patched.patches) == {f"diffusion_model.{k}" for k in lora.weight_keys}

    file_sd, _ = load_lora_file(path)
    expected = dict(base)
    touched = {k: torch.zeros(base[k].shape[0], dtype=torch.bool) for k in lora.weight_keys}
    for i, t in enumerate(lora.targets):
        rows = slice(t.row_start, t.row_start + t.row_len)
        delta = file_delta(file_sd, t.peft_name)                           # bf16-rounded when the file is bf16
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
        torch.testing.assert_close(delta, lora.delta(i).detach(), **tol)  # the file holds our delta(i)
        expected[t.weight_key] = expected[t.weight_key].clone()
        expected[t.weight_key][rows] += delta
        assert not touched[t.weight_key][rows].any(), f"{t.peft_name} overlaps another target"
        touched[t.weight_key][rows] = True
    for key, weight in weights.items():
        if key in touched:
            torch.testing.assert_close(weight, expected[key], rtol=1e-6, atol=1e-6)
            assert torch.equal(weight[~touched[key]], base[key][~touched[key]]), f"{key}: rows outside the targets changed"
            assert not torch.equal(weight[touched[key]], base[key][touched[key]]), f"{key}: LoRA had no effect"
        else:
            assert torch.equal(weight, base[key]), f"{key} changed but is not a LoRA target"


def test_stock_loader_warns_about_a_key_it_cannot_map(tiny_flux, loras_dir, unload_models, caplog):
    """Positive control for the 'no unloaded keys' checks above: the warning exists and caplog sees it."""
    sd = peft_state_dict(random_lora(("txt_qk",)))
    sd["transformer.transformer_blocks.0.attn.no_such_proj.lora_A.weight"] = torch.ones(4, H)
    path = save_lora_file(sd, loras_dir, "bad", {})
    caplog.set_level(logging.WARNING)
    stock_load_and_patch(tiny_flux, path.name)
    assert any("lora key not loaded" in r.getMessage() and "no_such_proj" in r.getMessage() for r in caplog.records)


# ---- diffusers ------------------------------------------------------------------------------------

def tiny_diffusers_flux():
    """diffusers' FluxTransformer2DModel with TINY_FLUX's shapes (hidden 64 = 2 heads x 32)."""
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=TINY_FLUX["depth"],
                                  num_single_layers=TINY_FLUX["depth_single"], attention_head_dim=H // TINY_FLUX["heads"],
                                  num_attention_heads=TINY_FLUX["heads"], joint_attention_dim=TINY_FLUX["context"],
                                  pooled_projection_dim=TINY_FLUX["vec"], guidance_embeds=True,
                                  axes_dims_rope=TINY_FLUX["axes_dim"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("groups", [("txt_qk",), ("all_attn",)], ids=["txt_qk", "all_attn"])
def test_diffusers_loads_every_key_and_fuses_our_delta(tmp_path, monkeypatch, caplog, groups, dtype):
    from diffusers import FluxPipeline
    monkeypatch.setattr(logging.getLogger("diffusers"), "propagate", True)  # diffusers logs to its own handler
    lora = random_lora(groups)
    ours = peft_state_dict(lora, dtype=dtype)
    path = save_lora_file(ours, tmp_path, "erase", {"config": {"concept": "x"}})
    transformer = tiny_diffusers_flux()
    base = {k: v.clone() for k, v in transformer.state_dict().items()}

    caplog.set_level(logging.WARNING)
    state_dict, alphas = FluxPipeline.lora_state_dict(str(path), return_alphas=True)
    assert set(state_dict) == set(ours) and not alphas                   # taken as PEFT, unconverted
    FluxPipeline.load_lora_into_transformer(state_dict, network_alphas=alphas, transformer=transformer)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not warnings, warnings
    wrapped = sorted(name for name, m in transformer.named_modules() if hasattr(m, "lora_A"))
    assert wrapped == sorted(t.peft_name.removeprefix("transformer.") for t in lora.targets)

    transformer.fuse_lora(lora_scale=1.0)
    transformer.unload_lora()                                            # keeps the fused weights
    fused = transformer.state_dict()
    assert fused.keys() == base.keys()
    targets = {f"{t.peft_name.removeprefix('transformer.')}.weight": i for i, t in enumerate(lora.targets)}
    for key, weight in fused.items():
        if key not in targets:
            assert torch.equal(weight, base[key]), f"{key} changed but is not a LoRA target"
            continue
        t = lora.targets[targets[key]]
        delta = weight - base[key]
        torch.testing.assert_close(delta, file_delta(ours, t.peft_name), rtol=1e-4, atol=1e-5)
        tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
        torch.testing.assert_close(delta, lora.delta(targets[key]).detach(), **tol)


def test_diffusers_warns_about_a_key_it_cannot_place(monkeypatch, caplog):
    """Positive control for the 'no warnings' check above: diffusers' warning reaches caplog."""
    from diffusers import FluxPipeline
    monkeypatch.setattr(logging.getLogger("diffusers"), "propagate", True)
    sd = peft_state_dict(random_lora(("txt_qk",)))
    sd["transformer.transformer_blocks.0.attn.add_q_proj.lora_C.weight"] = torch.ones(4, H)
    caplog.set_level(logging.WARNING)
    state_dict, alphas = FluxPipeline.lora_state_dict(sd, return_alphas=True)
    FluxPipeline.load_lora_into_transformer(state_dict, network_alphas=alphas, transformer=tiny_diffusers_flux())
    assert any("unexpected keys" in r.getMessage() and "lora_C" in r.getMessage() for r in caplog.records)


# ---- the released EraseAnything LoRA --------------------------------------------------------------

@needs_official
def test_official_lora_maps_every_key_onto_full_size_flux(caplog):
    """All 76 keys land on txt_attn.qkv rows [0:3072] (add_q) and [3072:6144] (add_k) of 19 double
    blocks of a hidden-3072 Flux, built on the meta device (12B parameters, no memory)."""
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models
    official, metadata = load_lora_file(OFFICIAL)
    assert len(official) == 76 and {t.dtype for t in official.values()} == {torch.bfloat16}
    assert describe_metadata(metadata) == "no EraseAnything metadata (format: pt)"

    model = comfy.supported_models.Flux(dict(FULL_FLUX)).get_model({}, device="meta")
    cpu = torch.device("cpu")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
    caplog.set_level(logging.WARNING)
    patched, _ = comfy.sd.load_lora_for_models(patcher, None, official, 1.0, 0)
    assert_no_unloaded_keys(caplog)

    assert set(patched.patches) == {f"diffusion_model.double_blocks.{i}.txt_attn.qkv.weight" for i in range(19)}
    for i in range(19):
        patches = sorted(patched.patches[f"diffusion_model.double_blocks.{i}.txt_attn.qkv.weight"], key=lambda p: p[3])
        assert [p[3] for p in patches] == [(0, 0, 3072), (0, 3072, 3072)]
        for (_, adapter, _, _, _), proj in zip(patches, ("add_q_proj", "add_k_proj")):
            up, down, alpha = adapter.weights[:3]
            prefix = f"transformer.transformer_blocks.{i}.attn.{proj}"
            assert up is official[f"{prefix}.lora_B.weight"] and down is official[f"{prefix}.lora_A.weight"]
            assert alpha is None  # no alpha keys: scale 1


@needs_official
@pytest.mark.slow
def test_official_lora_block0_applies_exactly_b_at_a_on_real_3072_flux(loras_dir, unload_models, caplog):
    """Numerically, on a stock-detectable Flux (hidden 3072, 1 double + 1 single block, ~530M params)."""
    official, _ = load_lora_file(OFFICIAL)
    block0 = {k: v for k, v in official.items() if k.startswith("transformer.transformer_blocks.0.")}
    assert len(block0) == 4
    path = save_lora_file(block0, loras_dir, "official_block0", {})
    model = comfy_host.load_flux(comfy_host.flux_state_dict(hidden=3072, heads=24, axes_dim=(16, 56, 56), depth=1,
                                                            depth_single=1, context=32, vec=16))
    key = "double_blocks.0.txt_attn.qkv.weight"
    qkv_base = model.model.diffusion_model.state_dict()[key].clone()   # (3 * 3072, 3072)
    other_base = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()
                  if k.startswith("double_blocks.0.txt_attn") and k != key}

    caplog.set_level(logging.WARNING)
    import comfy.model_management
    import nodes
    with torch.inference_mode():
        (patched,) = nodes.LoraLoaderModelOnly().load_lora_model_only(model, path.name, 1.0)
        comfy.model_management.load_models_gpu([patched])
        qkv = patched.model.diffusion_model.state_dict()[key].clone()
        other = {k: v.clone() for k, v in patched.model.diffusion_model.state_dict().items() if k in other_base}
    assert_no_unloaded_keys(caplog)
    assert set(patched.patches) == {f"diffusion_model.{key}"}

    prefix = "transformer.transformer_blocks.0.attn"
    torch.testing.assert_close(qkv[:3072], qkv_base[:3072] + file_delta(block0, f"{prefix}.add_q_proj"),
                               rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(qkv[3072:6144], qkv_base[3072:6144] + file_delta(block0, f"{prefix}.add_k_proj"),
                               rtol=1e-6, atol=1e-6)
    assert torch.equal(qkv[6144:], qkv_base[6144:])                     # v rows untouched
    assert not torch.equal(qkv[:6144], qkv_base[:6144])
    assert all(torch.equal(other[k], other_base[k]) for k in other_base)

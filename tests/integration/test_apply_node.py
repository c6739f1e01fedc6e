"""Apply Erasure LoRA in real ComfyUI (in-process, CPU, tiny Flux), run the way the executor runs nodes:
a class clone, under torch.inference_mode(). LoRAs are built with our ErasureLoRA (random non-zero B) and
saved with our file format; weights are read after ComfyUI has loaded and patched the model.

The released EraseAnything LoRA's layout is covered in test_lora_interop.py, not here."""

import os
import pickle
from pathlib import Path

import pytest
import torch

from eraseanything_core.lora import ErasureLoRA, flux_targets
from eraseanything_core.lora_file import peft_state_dict, save_lora_file
from tests import comfy_host
from tests.comfy_host import TINY_FLUX

REPO = Path(__file__).resolve().parents[2]
QKV0 = "double_blocks.0.txt_attn.qkv.weight"


@pytest.fixture(scope="module")
def apply_node():
    """The node class as the executor prepares it, with the repo imported as ComfyUI imports a pack."""
    return comfy_host.import_pack_module("nodes.apply").ApplyErasureLoRA.PREPARE_CLASS_CLONE({})


@pytest.fixture
def loras_dir(tmp_path, monkeypatch):
    """A temporary models/loras that ComfyUI's LoRA list and loaders search (with .pt/.ckpt listed too)."""
    import folder_paths
    folder = tmp_path / "loras"
    folder.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras",
                        ([str(folder)], folder_paths.supported_pt_extensions))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return folder


@pytest.fixture
def unload_models():
    import comfy.model_management
    comfy.model_management.unload_all_models()
    yield
    comfy.model_management.unload_all_models()  # restores the weights that load_models_gpu patched


def random_lora(seed: int, hidden: int = TINY_FLUX["hidden"], rank: int = 4) -> ErasureLoRA:
    """txt_qk targets of a Flux with the tiny model's depth and the given width; random non-zero B."""
    gen = torch.Generator().manual_seed(seed)
    targets = flux_targets(("txt_qk",), hidden, TINY_FLUX["depth"], TINY_FLUX["depth_single"], TINY_FLUX["vec"])
    lora = ErasureLoRA(targets, rank=rank, alpha=2.0 * rank, generator=gen)
    with torch.no_grad():
        for b in lora.lora_B:
            b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
    return lora


def save(state_dict: dict, folder: Path, name: str) -> str:
    return save_lora_file(state_dict, folder, name, {"config": {"concept": name}}).name


def apply(node, model, lora_name: str, strength: float = 1.0, lora=None):
    with torch.inference_mode():
        return node.execute(model, lora_name, strength, lora).result  # (model, info)


def loaded_weights(patcher) -> dict[str, torch.Tensor]:
    """The diffusion model's weights once ComfyUI has loaded `patcher` (patches applied)."""
    import comfy.model_management
    with torch.inference_mode():
        comfy.model_management.load_models_gpu([patcher])
        weights = {k: v.clone() for k, v in patcher.model.diffusion_model.state_dict().items()}
    comfy.model_management.unload_all_models()
    return weights


def module_deltas(state_dict: dict, strength: float = 1.0) -> dict[str, torch.Tensor]:
    """peft module name -> strength * B @ A, float32: (row_len, in)."""
    names = {k.rsplit(".lora_", 1)[0] for k in state_dict}
    return {m: strength * (state_dict[f"{m}.lora_B.weight"].float() @ state_dict[f"{m}.lora_A.weight"].float())
            for m in names}


def wrapped_modules(patcher) -> list[str]:
    """Modules of the loaded diffusion model that compute their weight per forward (weight_function)."""
    return [name for name, m in patcher.model.diffusion_model.named_modules()
            if getattr(m, "weight_function", None) or getattr(m, "bias_function", None)]


def test_strength_zero_leaves_every_weight_equal_to_base(apply_node, tiny_flux, loras_dir, unload_models):
    name = save(peft_state_dict(random_lora(1), torch.float32), loras_dir, "erase_a")
    base = loaded_weights(tiny_flux)

    patched, info = apply(apply_node, tiny_flux, name, 0.0)
    weights = loaded_weights(patched)
    changed = sorted(k for k in base if not torch.equal(weights[k], base[k]))
    assert not changed, f"strength 0 changed {changed}"
    assert "erases 'erase_a'" in info

    full, _ = apply(apply_node, tiny_flux, name, 1.0)  # positive control: the same file does change weights
    assert not torch.equal(loaded_weights(full)[QKV0], base[QKV0])


def test_chaining_two_erasures_equals_applying_their_sum(apply_node, tiny_flux, loras_dir, unload_models):
    """Apply(Apply(model, a, 0.5), b, 2.0) == Apply(model, a + b): the rank-concatenated LoRA whose
    B @ A is 0.5 * B_a A_a + 2.0 * B_b A_b. ComfyUI adds chained patches to the same weight."""
    sd_a, sd_b = (peft_state_dict(random_lora(seed), torch.float32) for seed in (1, 2))
    sd_sum = {}
    for module in {k.rsplit(".lora_", 1)[0] for k in sd_a}:
        a_key, b_key = f"{module}.lora_A.weight", f"{module}.lora_B.weight"
        sd_sum[a_key] = torch.cat([sd_a[a_key], sd_b[a_key]], dim=0)                  # (r_a + r_b, in)
        sd_sum[b_key] = torch.cat([0.5 * sd_a[b_key], 2.0 * sd_b[b_key]], dim=1)      # (rows, r_a + r_b)
    names = [save(sd, loras_dir, n) for sd, n in ((sd_a, "a"), (sd_b, "b"), (sd_sum, "a_plus_b"))]
    base = loaded_weights(tiny_flux)

    first, _ = apply(apply_node, tiny_flux, names[0], 0.5)
    chained, _ = apply(apply_node, first, names[1], 2.0)
    summed, _ = apply(apply_node, tiny_flux, names[2], 1.0)
    w_chained, w_summed = loaded_weights(chained), loaded_weights(summed)

    for key in base:
        torch.testing.assert_close(w_chained[key], w_summed[key], rtol=1e-6, atol=1e-6)
    expected = base[QKV0].clone()
    for module, delta in module_deltas(sd_sum).items():
        if module.startswith("transformer.transformer_blocks.0."):
            row = 0 if module.endswith("add_q_proj") else TINY_FLUX["hidden"]
            expected[row:row + delta.shape[0]] += delta
    torch.testing.assert_close(w_chained[QKV0], expected, rtol=1e-6, atol=1e-6)
    assert not torch.equal(w_chained[QKV0], base[QKV0])


def test_lora_for_another_width_is_refused_naming_the_mismatch(apply_node, tiny_flux, loras_dir):
    name = save(peft_state_dict(random_lora(1, hidden=128), torch.float32), loras_dir, "wide")
    with pytest.raises(ValueError) as err:
        apply(apply_node, tiny_flux, name)
    message = str(err.value)
    assert "transformer.transformer_blocks.0.attn.add_" in message, message
    assert "128" in message and "64" in message and "different model width" in message, message
    assert not tiny_flux.patches, "a refused LoRA left patches on the input model"


def test_unknown_lora_keys_are_refused_naming_them(apply_node, tiny_flux, loras_dir):
    sd = peft_state_dict(random_lora(1), torch.float32)
    h = TINY_FLUX["hidden"]
    sd["transformer.transformer_blocks.0.attn.no_such_proj.lora_A.weight"] = torch.ones(4, h)
    sd["transformer.transformer_blocks.0.attn.no_such_proj.lora_B.weight"] = torch.ones(h, 4)
    sd["transformer.transformer_blocks.7.attn.add_q_proj.lora_A.weight"] = torch.ones(4, h)  # tiny Flux has 2 blocks
    sd["transformer.transformer_blocks.7.attn.add_q_proj.lora_B.weight"] = torch.ones(h, 4)
    name = save(sd, loras_dir, "unknown_keys")
    with pytest.raises(ValueError) as err:
        apply(apply_node, tiny_flux, name)
    message = str(err.value)
    assert "transformer.transformer_blocks.0.attn.no_such_proj" in message, message
    assert "transformer.transformer_blocks.7.attn.add_q_proj" in message, message
    assert not tiny_flux.patches


class _Payload:
    """Unpickling this creates a directory: proof that a file was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("file_name, expected", [
    ("evil.pt", "only .safetensors"),
    ("evil.ckpt", "only .safetensors"),
    ("pickle_renamed.safetensors", "not a valid safetensors file"),
    ("truncated.safetensors", "not a valid safetensors file"),
])
def test_pickle_or_malformed_files_are_refused_without_unpickling(apply_node, tiny_flux, loras_dir, tmp_path,
                                                                  monkeypatch, file_name, expected):
    import comfy.utils
    import folder_paths
    marker = tmp_path / "unpickled"
    payload = pickle.dumps({"transformer.transformer_blocks.0.attn.add_q_proj.lora_A.weight": _Payload(marker)})
    if file_name.startswith("truncated"):
        good = save(peft_state_dict(random_lora(1), torch.float32), loras_dir, "good")
        payload = (loras_dir / good).read_bytes()[:-100]
    (loras_dir / file_name).write_bytes(payload)
    assert file_name in folder_paths.get_filename_list("loras")  # the user can pick it in the combo

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a LoRA file went to a pickle-capable loader")
    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(comfy.utils, "load_torch_file", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)

    with pytest.raises(ValueError, match=expected) as err:
        apply(apply_node, tiny_flux, file_name)
    assert file_name in str(err.value)
    assert not marker.exists(), "the file was unpickled"


def test_sampling_with_an_applied_lora_uses_merged_weights_without_per_step_wrappers(
        apply_node, tiny_flux, tiny_clip, loras_dir, unload_models):
    """KSampler on the applied model == KSampler on a model whose weights were merged by hand, and while it
    samples, no module carries a weight_function (ComfyUI's per-forward patch), so a step costs the same."""
    import comfy.model_management
    import nodes
    sd = peft_state_dict(random_lora(3), torch.float32)
    name = save(sd, loras_dir, "erase_c")
    merged_sd = comfy_host.flux_state_dict(seed=0, **TINY_FLUX)  # tiny_flux's own weights
    for module, delta in module_deltas(sd).items():
        block, proj = int(module.split(".")[2]), module.rsplit(".", 1)[1]
        row = 0 if proj == "add_q_proj" else TINY_FLUX["hidden"]
        merged_sd[f"double_blocks.{block}.txt_attn.qkv.weight"][row:row + delta.shape[0]] += delta
    expected_qkv0 = merged_sd[QKV0].clone()
    merged = comfy_host.load_flux(merged_sd)  # the loader consumes the dict

    patched, _ = apply(apply_node, tiny_flux, name)
    qkv0 = patched.model.diffusion_model.double_blocks[0].txt_attn.qkv
    seen = []
    hook = qkv0.register_forward_pre_hook(
        lambda m, args: seen.append((len(getattr(m, "weight_function", [])), m.weight.detach().clone())))

    def sample(model):
        positive = tiny_clip.encode_from_tokens_scheduled(tiny_clip.tokenize("a painting of a quiet village"))
        negative = tiny_clip.encode_from_tokens_scheduled(tiny_clip.tokenize(""))
        latent = {"samples": torch.zeros(1, 16, 8, 8)}
        with torch.inference_mode():
            (out,) = nodes.common_ksampler(model, 7, 3, 1.0, "euler", "simple", positive, negative, latent)
            wrapped = wrapped_modules(model)
        comfy.model_management.unload_all_models()
        return out["samples"], wrapped

    probe = tiny_flux.clone()  # positive control: a per-forward wrapper is what wrapped_modules() finds
    probe.add_weight_wrapper(f"diffusion_model.{QKV0}", lambda weight: weight)
    with torch.inference_mode():
        comfy.model_management.load_models_gpu([probe])
        assert wrapped_modules(probe) == ["double_blocks.0.txt_attn.qkv"]
    comfy.model_management.unload_all_models()

    try:
        x_patched, wrapped = sample(patched)
    finally:
        hook.remove()
    x_merged, _ = sample(merged)
    x_base, _ = sample(tiny_flux)

    assert seen, "the sampler never ran the patched block"
    assert all(n == 0 for n, _ in seen) and not wrapped, f"per-forward weight wrappers during sampling: {wrapped}"
    for _, weight in seen:
        torch.testing.assert_close(weight, expected_qkv0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x_patched, x_merged, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(x_patched, x_base, atol=1e-4), "the LoRA did not change the sample"


OFFICIAL = REPO.parent / "shared" / "fixtures" / "eraseanything-official-nudity-lora.safetensors"


@pytest.mark.skipif(not OFFICIAL.exists(), reason=f"released EraseAnything LoRA not found at {OFFICIAL}")
def test_released_eraseanything_lora_loads_through_apply(apply_node, tiny_flux, loras_dir):
    """The released file (bf16, no alpha, no metadata) goes through Apply onto a full-size FLUX.1
    (19 double blocks, hidden 3072, built on the meta device: no memory), and is refused, naming the
    width, by the tiny model."""
    import shutil

    import comfy.model_patcher
    import comfy.supported_models
    shutil.copy(OFFICIAL, loras_dir / "eraseanything_nudity.safetensors")
    full = dict(image_model="flux", in_channels=16, patch_size=2, out_channels=16, vec_in_dim=768,
                context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19,
                depth_single_blocks=38, axes_dim=[16, 56, 56], theta=10000, qkv_bias=True, guidance_embed=True)
    cpu = torch.device("cpu")
    model = comfy.model_patcher.ModelPatcher(comfy.supported_models.Flux(full).get_model({}, device="meta"), cpu, cpu)
    patched, info = apply(apply_node, model, "eraseanything_nudity.safetensors")
    assert len(patched.patches) == 19 and "no EraseAnything metadata" in info
    with pytest.raises(Exception, match="3072"):
        apply(apply_node, tiny_flux, "eraseanything_nudity.safetensors")

"""The real ComfyUI as a test host: import it on the CPU and build tiny Flux models through its loaders.

Used by the in-process tests (via conftest.py) and by the test-only node pack that the server tests
load (tests/tiny_models_pack), so both build byte-identical models from the same seeds.
"""

import contextlib
import os
import sys
from pathlib import Path

import torch

CACHE = Path(os.environ.get("EA_CACHE", Path.home() / ".cache" / "eraseanything-comfyui"))
COMFY_DIR = Path(os.environ.get("EA_COMFY_DIR", CACHE / "comfyui"))

# hidden 64, 2 heads of 32 (RoPE axes 8+12+12), 2 double + 2 single blocks, T5 width 32, pooled 16.
TINY_FLUX = dict(hidden=64, heads=2, axes_dim=(8, 12, 12), depth=2, depth_single=2, context=32, vec=16)


def import_comfy():
    """Put ComfyUI on sys.path and select the CPU before model_management is imported."""
    if str(COMFY_DIR) not in sys.path:
        sys.path.insert(0, str(COMFY_DIR))
    from comfy.cli_args import args
    args.cpu = True
    import comfy.model_management  # noqa: F401  (reads args.cpu at import)
    import comfy.sd  # noqa: F401


def tiny_flux_detection():
    """ComfyUI's Flux detection for non-3072 widths (shared with the demo world's loader)."""
    repo = str(Path(__file__).resolve().parents[1])
    if repo not in sys.path:  # the server loads this file by path; append, so ComfyUI's modules win
        sys.path.append(repo)
    from eraseanything_core.demo_world.model import tiny_flux_detection as detection
    return detection()


def flux_state_dict(hidden=64, heads=2, axes_dim=(8, 12, 12), depth=2, depth_single=2, context=32, vec=16,
                    seed=0, dtype=torch.float32, std=0.05):
    """A seeded random Flux.1-dev state dict (guidance embedding on), keyed as ComfyUI saves it."""
    import comfy.ops
    from comfy.ldm.flux.model import Flux
    meta = Flux(in_channels=16, out_channels=16, vec_in_dim=vec, context_in_dim=context, hidden_size=hidden,
                mlp_ratio=4.0, num_heads=heads, depth=depth, depth_single_blocks=depth_single,
                axes_dim=list(axes_dim), theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True,
                device="meta", operations=comfy.ops.disable_weight_init)
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in meta.state_dict().items():
        if name.endswith(".scale"):  # RMSNorm scales
            sd[name] = torch.ones(p.shape, dtype=dtype)
        else:
            sd[name] = (torch.randn(p.shape, generator=gen) * std).to(dtype)
    return sd


def load_flux(sd, dtype=None):
    """Load a Flux state dict through ComfyUI's own `load_diffusion_model_state_dict` -> ModelPatcher."""
    import comfy.sd
    options = {"dtype": dtype} if dtype is not None else {}
    real_width = sd["img_in.weight"].shape[0] == 3072  # real Flux width: the stock, unpatched detection
    with contextlib.nullcontext() if real_width else tiny_flux_detection():
        mp = comfy.sd.load_diffusion_model_state_dict(sd, model_options=options)
    if mp is None:
        raise RuntimeError("ComfyUI did not recognise the synthetic Flux state dict")
    return mp


def tiny_flux(seed=0, dtype=None, cut=(), **shape):
    """The tiny Flux; `cut` names weights to zero, e.g. the pooled-vector path
    ("vector_in.out_layer.weight", "vector_in.out_layer.bias") so prompts reach the image through the
    T5 tokens only, as the paper finds for FLUX.1."""
    sd = flux_state_dict(seed=seed, **{**TINY_FLUX, **shape})
    for key in cut:
        sd[key].zero_()
    return load_flux(sd, dtype=dtype)


POOLED_PATH = ("vector_in.out_layer.weight", "vector_in.out_layer.bias")
TOKEN_PATH = ("txt_in.weight", "txt_in.bias")


def tiny_clip(seed=0, contextual=True):
    """A tiny T5 + CLIP-L pair with ComfyUI's own Flux tokenizers: cond (1, 256, 32), pooled (1, 16).

    contextual=False zeroes T5's attention and MLP outputs, so each T5 output depends on its own token
    only: a prompt's concept then sits in the concept's tokens, as trained encoders mostly keep it."""
    import comfy.sd
    import comfy.supported_models_base
    import comfy.text_encoders.flux as tf
    options = {
        "clip_l_model_config": {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
                                "num_hidden_layers": 2, "projection_dim": 16},
        "t5xxl_model_config": {"d_model": 32, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 2},
        "dtype": torch.float32,
    }
    clip = comfy.sd.CLIP(target=comfy.supported_models_base.ClipTarget(tf.FluxTokenizer, tf.flux_clip()), model_options=options)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in clip.cond_stage_model.named_parameters():
            if "norm" in name:  # layer/RMS norms: identity, so the prompt actually reaches the output
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if "embed" in name else 0.2))
            if not contextual and "t5xxl" in name and (name.endswith(".o.weight") or name.endswith(".wo.weight")):
                p.zero_()
    return clip


PACK_NAME = "eraseanything_pack_under_test"


def import_pack_module(submodule: str):
    """A module of this repo imported the way ComfyUI imports a custom node pack (a package by
    directory, relative imports inside), e.g. import_pack_module("nodes.apply_runtime")."""
    import importlib
    import importlib.util
    repo = Path(__file__).resolve().parents[1]
    if PACK_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK_NAME, repo / "__init__.py",
                                                      submodule_search_locations=[str(repo)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_NAME] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{PACK_NAME}.{submodule}")

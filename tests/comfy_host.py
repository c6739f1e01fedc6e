"""Tiny Flux models for tests, built through the real ComfyUI's loaders (host bootstrap: tools/host.py).

Used by the in-process tests (via conftest.py) and by the test-only node pack that the server tests
load (tests/tiny_models_pack), so both build byte-identical models from the same seeds.
"""

import sys
from pathlib import Path

import torch

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # the server loads this file by path; append, so ComfyUI's modules win
    sys.path.append(str(_REPO))
from tools.host import CACHE, COMFY_DIR, import_comfy, import_pack_module  # noqa: E402,F401

# hidden 64, 2 heads of 32 (RoPE axes 8+12+12), 2 double + 2 single blocks, T5 width 32, pooled 16.
TINY_FLUX = dict(hidden=64, heads=2, axes_dim=(8, 12, 12), depth=2, depth_single=2, context=32, vec=16)


def flux_state_dict(seed=0, dtype=torch.float32, std=0.05, **shape):
    """A seeded random Flux.1-dev state dict (guidance embedding on), keyed as ComfyUI saves it."""
    from eraseanything_core.comfy.demo_world import flux_module
    meta = flux_module("meta", **{**TINY_FLUX, **shape})
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
    from eraseanything_core.comfy.demo_world import load_flux as load
    return load(sd, dtype=dtype)


def tiny_flux(seed=0, dtype=None, cut=(), **shape):
    """The tiny Flux; `cut` names weights to zero, e.g. the pooled-vector path
    ("vector_in.out_layer.weight", "vector_in.out_layer.bias") so prompts reach the image through the
    T5 tokens only, as the paper finds for FLUX.1."""
    sd = flux_state_dict(seed=seed, **shape)
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

"""The demo world's models, built from ComfyUI's own classes, and sampling pictures from them.

- Flux: `comfy.ldm.flux.model.Flux` at hidden 128, 4 heads of 32 (RoPE axes 8+12+12), 2 double + 2
  single blocks, guidance embedding on, T5 width 64, pooled width 32; 16-channel latents, patch 2, so a
  16x16 latent is 64 image tokens. Loaded by `comfy.sd.load_diffusion_model_state_dict`, with a
  detection fix (ComfyUI derives 24 heads and axes [16, 56, 56] for every Flux).
- Text: ComfyUI's FluxClipModel (T5 + CLIP-L) at tiny sizes behind ComfyUI's FluxTokenizer; the T5
  stream is padded to 16 tokens (tokenizer option `t5xxl_min_length`), so a caption is 16 text tokens.
- VAE: `comfy.sd.VAE` with our pixel-unshuffle first stage (vae.py), so VAEEncode/VAEDecode work.
"""

import contextlib
import types
from pathlib import Path

import torch

import comfy.latent_formats
import comfy.model_detection
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.supported_models_base
import comfy.text_encoders.flux
import comfy.utils
from comfy.ldm.flux.model import Flux
from comfy.text_encoders.t5 import T5LayerFF, T5LayerSelfAttention

from ..data import euler_sample
from ..demo_world.text import T5_TOKENS, encode, tokenize
from ..demo_world.vae import PixelUnshuffleVAE, model_space_to_pixels
from .flux import FluxRunner

FLUX = dict(hidden=128, heads=4, axes_dim=(8, 12, 12), depth=2, depth_single=2, context=64, vec=32)
T5 = {"d_model": 64, "d_ff": 128, "d_kv": 32, "num_heads": 2, "num_layers": 2}
CLIP_L = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
          "projection_dim": 32}
FLUX_FILE, TEXT_FILE, JUDGE_FILE = "flux.safetensors", "text_encoders.safetensors", "judge.safetensors"


@contextlib.contextmanager
def tiny_flux_detection():
    """ComfyUI's Flux detection hard-codes 24 heads and RoPE axes [16, 56, 56] (head dim 128). For other
    widths, derive heads and axes from the weights (head dim = size of the q norm); the rest is stock."""
    md = comfy.model_detection
    original = md.detect_unet_config

    def detect(state_dict, key_prefix, metadata=None):
        cfg = original(state_dict, key_prefix, metadata=metadata)
        if cfg and cfg.get("image_model") == "flux" and cfg.get("hidden_size") != 3072:
            head_dim = state_dict[f"{key_prefix}double_blocks.0.img_attn.norm.key_norm.scale"].shape[0]
            cfg["num_heads"] = cfg["hidden_size"] // head_dim
            first = head_dim - 2 * (3 * head_dim // 8)
            cfg["axes_dim"] = [first, 3 * head_dim // 8, 3 * head_dim // 8]
        return cfg

    md.detect_unet_config = detect
    try:
        yield
    finally:
        md.detect_unet_config = original


def flux_module(device="cpu", **shape):
    """An uninitialised Flux.1-dev module (guidance embedding on) of the demo world's shape, or of `shape`
    (keys of FLUX), with weights on `device` ("meta" for keys and shapes only)."""
    f = {**FLUX, **shape}
    return Flux(in_channels=16, out_channels=16, vec_in_dim=f["vec"], context_in_dim=f["context"],
                hidden_size=f["hidden"], mlp_ratio=4.0, num_heads=f["heads"], depth=f["depth"],
                depth_single_blocks=f["depth_single"], axes_dim=list(f["axes_dim"]), theta=10000, patch_size=2,
                qkv_bias=True, guidance_embed=True, device=device, dtype=torch.float32,
                operations=comfy.ops.disable_weight_init)


def init_flux_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """Seeded initial weights, keyed as ComfyUI saves a Flux: Linear weights N(0, 0.02), biases 0,
    RMSNorm scales 1, and the final projection 0 (the untrained model predicts v = 0)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in flux_module("meta").state_dict().items():
        if name.endswith(".scale"):
            sd[name] = torch.ones(p.shape)
        elif name.endswith(".bias") or name.startswith("final_layer.linear"):
            sd[name] = torch.zeros(p.shape)
        else:
            sd[name] = torch.randn(p.shape, generator=gen) * 0.02
    return sd


def load_flux(state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None = torch.float32):
    """A ComfyUI ModelPatcher (model_base.Flux) from a Flux state dict, by ComfyUI's own loader (with the
    detection fix for widths other than FLUX.1's 3072). dtype: the loader's weight dtype option."""
    real_width = state_dict["img_in.weight"].shape[0] == 3072  # FLUX.1's width: the stock detection
    with contextlib.nullcontext() if real_width else tiny_flux_detection():
        patcher = comfy.sd.load_diffusion_model_state_dict(state_dict, model_options={"dtype": dtype} if dtype else {})
    if patcher is None:
        raise RuntimeError("ComfyUI did not recognise the Flux state dict")
    return patcher


def make_clip(state_dict: dict[str, torch.Tensor] | None = None, seed: int = 0, t5_layers: int | None = None):
    """A comfy.sd.CLIP: tiny T5 + CLIP-L behind ComfyUI's FluxTokenizer; T5 padded to T5_TOKENS tokens.
    Weights from `state_dict` (keys of `clip.cond_stage_model`; the T5's depth is read from them), else
    seeded random ones (init_text) for a T5 of `t5_layers` layers (default T5's)."""
    if state_dict is not None:
        t5_layers = t5_depth(state_dict)
    t5 = {**T5, "num_layers": T5["num_layers"] if t5_layers is None else t5_layers}
    options = {"clip_l_model_config": CLIP_L, "t5xxl_model_config": t5, "dtype": torch.float32}
    tf = comfy.text_encoders.flux
    target = comfy.supported_models_base.ClipTarget(tf.FluxTokenizer, tf.flux_clip())
    clip = comfy.sd.CLIP(target=target, tokenizer_data={"t5xxl_min_length": T5_TOKENS}, model_options=options)
    with torch.no_grad():
        if state_dict is None:
            init_text(clip.cond_stage_model, seed)
        else:
            missing, unexpected = clip.cond_stage_model.load_state_dict(state_dict, strict=False)
            if missing or unexpected:
                raise ValueError(f"text encoder weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return clip


def t5_depth(state_dict: dict[str, torch.Tensor]) -> int:
    """Layers of the T5 in a text-encoder state dict: 0 is a T5 whose output is each token's own embedding
    after the final norm (docs/demo_world.md, "A T5 without layers")."""
    prefix = "t5xxl.transformer.encoder.block."
    return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})


def init_text(model: torch.nn.Module, seed: int):
    """Seeded weights for the text pair: norms identity, embeddings N(0, 1), matrices N(0, 1/fan_in)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.copy_(torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p))
        elif "embed" in name or "relative_attention_bias" in name or p.ndim < 2:
            p.copy_(torch.randn(p.shape, generator=gen) * (0.1 if p.ndim < 2 else 1.0))
        else:
            p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)


def _t5_ff_forward(self, x):
    return x + self.DenseReluDense(self.layer_norm(x))


def _t5_attention_forward(self, x, mask=None, past_bias=None, optimized_attention=None):
    output, past_bias = self.SelfAttention(self.layer_norm(x), mask=mask, past_bias=past_bias,
                                           optimized_attention=optimized_attention)
    return x + output, past_bias


def make_t5_trainable(clip_model):
    """ComfyUI's T5 layers add residuals in place (`x += ...`), which autograd refuses. Give these
    instances (only) out-of-place forwards with the same values, and make the T5 weights trainable."""
    for module in clip_model.t5xxl.modules():
        if isinstance(module, T5LayerFF):
            module.forward = types.MethodType(_t5_ff_forward, module)
        elif isinstance(module, T5LayerSelfAttention):
            module.forward = types.MethodType(_t5_attention_forward, module)
    clip_model.t5xxl.requires_grad_(True)


def make_vae():
    """A comfy.sd.VAE around PixelUnshuffleVAE: 32x32 image <-> 16x16 latent with 16 channels.

    Built through ComfyUI's pixel-space VAE branch (the state-dict key `pixel_space_vae`), then given
    our first stage, ratio 2 and 16 latent channels; encode/decode, tiling and memory estimates are stock.
    """
    vae = comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})
    vae.first_stage_model = PixelUnshuffleVAE().eval().to(vae.vae_dtype)
    vae.patcher = comfy.model_patcher.ModelPatcher(vae.first_stage_model, load_device=vae.device,
                                                   offload_device=comfy.model_management.vae_offload_device())
    vae.downscale_ratio = vae.upscale_ratio = 2
    vae.latent_channels = 16
    vae.size = None
    return vae


class DemoWorldLatent(comfy.latent_formats.Flux):
    """Flux's latent format (the same scale and shift, vae.py) with RGB preview factors that are exact for
    the pixel-unshuffle VAE: model-space channel 4c + 2p + q is colour c of sub-pixel (p, q), so a latent
    pixel's colour is the mean of its four sub-pixels. ComfyUI's latent previews (KSampler, the Train
    node's attention preview) then show the world's colours."""

    def __init__(self):
        super().__init__()
        self.latent_rgb_factors = [[0.25 if k // 4 == c else 0.0 for c in range(3)] for k in range(16)]
        self.latent_rgb_factors_bias = [0.0, 0.0, 0.0]
        self.taesd_decoder_name = None


def world_flux(state_dict: dict[str, torch.Tensor]):
    """The demo world's ModelPatcher: load_flux plus the world's latent previews."""
    patcher = load_flux(state_dict)
    patcher.model.latent_format = DemoWorldLatent()
    return patcher


def untrained_world(seed: int = 0):
    """(MODEL, CLIP, VAE) with seeded random weights: for tests that must not depend on trained files."""
    return world_flux(init_flux_state_dict(seed)), make_clip(seed=seed), make_vae()


def load_world(directory: Path):
    """(MODEL, CLIP, VAE) from the trained files in `directory` (flux.safetensors, text_encoders.safetensors)."""
    directory = Path(directory)
    missing = [name for name in (FLUX_FILE, TEXT_FILE) if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"demo world weights not found: {', '.join(str(directory / m) for m in missing)}. Train them with "
            "`python tools/train_demo_world.py` from the pack's folder (about an hour on two CPU cores).")
    flux_sd = {k: v.float() for k, v in comfy.utils.load_torch_file(str(directory / FLUX_FILE), safe_load=True).items()}
    text_sd = {k: v.float() for k, v in comfy.utils.load_torch_file(str(directory / TEXT_FILE), safe_load=True).items()}
    return world_flux(flux_sd), make_clip(text_sd), make_vae()


GUIDANCE = 3.5  # FluxGuidance's default
SAMPLE_STEPS = 16


def runner(patcher) -> FluxRunner:
    """The world's MODEL as a runner without a LoRA (a LoRA patched in by ComfyUI's loader applies as
    in a KSampler run), loaded for sampling."""
    run = FluxRunner(patcher)
    run.load(trainable=False)
    return run


@torch.no_grad()
def sample_latents(run: FluxRunner, context: torch.Tensor, pooled: torch.Tensor, noise: torch.Tensor,
                   steps: int = SAMPLE_STEPS, guidance: float = GUIDANCE, attention_override=None) -> torch.Tensor:
    """Pictures (b, 3, 32, 32) in [0, 1] for context (b, 16, 64), pooled (b, 32) and noise (b, 16, 16, 16):
    Euler on the model's own schedule, as KSampler draws with euler / simple / cfg 1 and FluxGuidance.
    attention_override: an optimized_attention_override for every attention call (training.WordKeyMask)."""
    b, device = noise.shape[0], run.device
    sigmas = run.sigmas(steps).to(device)
    g = torch.full((b,), guidance)
    options = None if attention_override is None else {"optimized_attention_override": attention_override}

    def velocity(x, sigma):
        return run.forward(x, torch.full((b,), sigma), context, pooled, g, transformer_options=options)
    x = euler_sample(velocity, noise.to(device), sigmas)  # the model-space latent: pixels in [-1, 1] (vae.py)
    return ((model_space_to_pixels(x.float().cpu()) + 1) / 2).clamp(0, 1)


def noise_for(n: int, seed: int) -> torch.Tensor:
    """(n, 16, 16, 16) start noise: picture i's depends only on (seed, i)."""
    return torch.randn((n, 16, 16, 16), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def sample_images(patcher, clip, texts: list[str], seed: int, steps: int = SAMPLE_STEPS,
                  guidance: float = GUIDANCE, batch: int = 128) -> torch.Tensor:
    """Pictures (n, 3, 32, 32) in [0, 1], one per text, from ComfyUI's model with its patches (LoRAs)
    applied (sample_latents). Seeded: the noise of picture i depends only on (seed, i)."""
    run = runner(patcher)
    noise = noise_for(len(texts), seed)
    pictures = []
    for start in range(0, len(texts), batch):
        chunk = texts[start:start + batch]
        context, pooled = encode(clip.cond_stage_model, *tokenize(clip, chunk))
        pictures.append(sample_latents(run, context, pooled, noise[start:start + batch], steps, guidance))
    return torch.cat(pictures)


def sampler(patcher, clip):
    """sample(texts, seed) -> pictures, for demo_world/scoring.py's score_groups."""
    return lambda texts, seed: sample_images(patcher, clip, texts, seed=seed)


def cond_sampler(run: FluxRunner):
    """sample(context, pooled, seed, attention_override=None) -> pictures, for demo_world/training.py's evaluations."""
    return lambda context, pooled, seed, attention_override=None: sample_latents(
        run, context, pooled, noise_for(context.shape[0], seed), attention_override=attention_override)

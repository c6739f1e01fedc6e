"""ComfyUI's Flux as a `Runner` (runner.py) for the trainer, and the one place a LoRA meets a MODEL.

- out-of-place double/single block forwards, installed through `patches_replace["dit"]`. Stock Flux
  blocks add residuals in place (`img += ...`): plain backward raises and checkpointed backward is
  silently wrong. Ours compute the same values without mutation (tests/integration/test_gradients.py);
- attention capture on chosen double blocks: softmax probabilities of every query on the concept
  key columns, differentiable, chunked (see `attention.py`);
- `FluxRunner`: a clone of the ModelPatcher, with the erasure LoRA as weight wrappers when it trains one
  (base weights stay as loaded, bf16 or fp8, no second copy); `forward`, the one Flux call of the pack
  (Train, Inspect, the demo world's sampling and training); the model's sigma schedule; and a count of
  the transformer passes a run spends;
- `build_runner` (the LoRA for a MODEL and a config, with the dtype policy) and `train`, which runs
  the whole erasure on a MODEL and returns it with the LoRA patched in as Apply does.
"""

import functools
import logging
from dataclasses import dataclass

import torch
from einops import rearrange
from torch.utils.checkpoint import checkpoint

import comfy.ldm.flux.model
import comfy.model_management
import comfy.samplers
from comfy.ldm.flux.layers import apply_mod
from comfy.ldm.flux.math import apply_rope
from comfy.ldm.modules.attention import optimized_attention

import comfy.sd

from ..attention import key_column_probs
from ..config import EraseConfig
from ..lora import ErasureLoRA, flux_targets
from ..lora_file import peft_state_dict
from ..runner import AttentionCapture, PassCounter, TextCond
from ..trainer import Callbacks, TrainResult, train_erasure

log = logging.getLogger(__name__)

CAPTURE_KEY = "eraseanything_capture"


class NotFluxError(TypeError):
    pass


class _StopForward(Exception):
    pass


def check_flux(model_patcher):
    """The Flux module of a FLUX.1 MODEL, or NotFluxError naming what was connected instead."""
    base = getattr(model_patcher, "model", None)
    dm = getattr(base, "diffusion_model", None)
    what = type(base).__name__ if base is not None else type(model_patcher).__name__
    if dm is not None and type(dm) is not comfy.ldm.flux.model.Flux:
        what += f" ({type(dm).__name__})"
    fix = "Load FLUX.1-dev or FLUX.1-schnell with 'Load Diffusion Model' or 'Load Checkpoint'."
    if type(dm) is not comfy.ldm.flux.model.Flux:
        raise NotFluxError(f"EraseAnything needs a FLUX.1 model (dev or schnell); got {what}. {fix}")
    if getattr(dm.params, "global_modulation", False) or not getattr(dm.double_blocks[0], "modulation", True) \
            or getattr(dm.double_blocks[0], "flipped_img_txt", False):
        raise NotFluxError(f"EraseAnything needs a FLUX.1 model (dev or schnell); got {what}, a Flux variant "
                           f"(Flux.2, Chroma, ...) whose blocks EraseAnything does not support yet. {fix}")
    return dm


def _rope(q, k, pe):
    # Stock RoPE computes in pe's float32; promote so float64 gradient checks stay float64.
    pe = pe.to(torch.promote_types(q.dtype, pe.dtype))
    return apply_rope(q, k, pe)


def _project_qkv(attn, x, norm, mod, heads):
    qkv = attn.qkv(apply_mod(norm(x), 1 + mod.scale, mod.shift))
    q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=heads)
    q, k = attn.norm(q, k, v)
    return q, k, v


def double_block_forward(block, img, txt, vec, pe, attn_mask, transformer_options, key_idx=None):
    """Flux.1 DoubleStreamBlock without in-place updates. Returns (img, txt, probs); probs is a tuple of
    (1, h, n, k_b) attention probabilities on key columns key_idx[b] (empty when key_idx is None)."""
    img_mod1, img_mod2 = block.img_mod(vec)
    txt_mod1, txt_mod2 = block.txt_mod(vec)
    img_q, img_k, img_v = _project_qkv(block.img_attn, img, block.img_norm1, img_mod1, block.num_heads)
    txt_q, txt_k, txt_v = _project_qkv(block.txt_attn, txt, block.txt_norm1, txt_mod1, block.num_heads)

    q = torch.cat((txt_q, img_q), dim=2)  # (b, h, n_txt + n_img, d): text first
    k = torch.cat((txt_k, img_k), dim=2)
    v = torch.cat((txt_v, img_v), dim=2)
    if pe is not None:
        q, k = _rope(q, k, pe)
    probs = tuple(key_column_probs(q[b:b + 1], k[b:b + 1], idx) for b, idx in enumerate(key_idx or ()))
    attn = optimized_attention(q, k, v, q.shape[1], skip_reshape=True, mask=attn_mask,
                               transformer_options=transformer_options)  # (b, n, h*d)
    n_txt = txt.shape[1]
    txt_attn, img_attn = attn[:, :n_txt], attn[:, n_txt:]

    img = img + apply_mod(block.img_attn.proj(img_attn), img_mod1.gate)
    img = img + apply_mod(block.img_mlp(apply_mod(block.img_norm2(img), 1 + img_mod2.scale, img_mod2.shift)), img_mod2.gate)
    txt = txt + apply_mod(block.txt_attn.proj(txt_attn), txt_mod1.gate)
    txt = txt + apply_mod(block.txt_mlp(apply_mod(block.txt_norm2(txt), 1 + txt_mod2.scale, txt_mod2.shift)), txt_mod2.gate)
    if txt.dtype == torch.float16:
        txt = torch.nan_to_num(txt, nan=0.0, posinf=65504, neginf=-65504)
    return img, txt, probs


def single_block_forward(block, x, vec, pe, attn_mask, transformer_options):
    """Flux.1 SingleStreamBlock without in-place updates; x is the joint [txt | img] sequence."""
    mod, _ = block.modulation(vec)
    qkv, mlp = torch.split(block.linear1(apply_mod(block.pre_norm(x), 1 + mod.scale, mod.shift)),
                           [3 * block.hidden_size, block.mlp_hidden_dim_first], dim=-1)
    q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=block.num_heads)
    q, k = block.norm(q, k, v)
    if pe is not None:
        q, k = _rope(q, k, pe)
    attn = optimized_attention(q, k, v, q.shape[1], skip_reshape=True, mask=attn_mask,
                               transformer_options=transformer_options)
    x = x + apply_mod(block.linear2(torch.cat((attn, block.mlp_act(mlp)), 2)), mod.gate)
    if x.dtype == torch.float16:
        x = torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
    return x


def _double_patch(args, extra, *, block, index, use_checkpoint):
    to = args["transformer_options"]
    capture: AttentionCapture | None = to.get(CAPTURE_KEY)
    key_idx = capture.key_idx if capture is not None and index in capture.blocks else None
    call = (functools.partial(checkpoint, double_block_forward, use_reentrant=False)
            if use_checkpoint and torch.is_grad_enabled() else double_block_forward)
    img, txt, probs = call(block, args["img"], args["txt"], args["vec"], args["pe"], args.get("attn_mask"), to, key_idx)
    if key_idx is not None:
        capture.probs[index] = list(probs)
        if capture.stop_after == index:
            raise _StopForward
    return {"img": img, "txt": txt}


def _single_patch(args, extra, *, block, use_checkpoint):
    call = (functools.partial(checkpoint, single_block_forward, use_reentrant=False)
            if use_checkpoint and torch.is_grad_enabled() else single_block_forward)
    return {"img": call(block, args["img"], args["vec"], args["pe"], args.get("attn_mask"), args["transformer_options"])}


def block_replacements(diffusion_model, use_checkpoint=False) -> dict:
    """patches_replace["dit"] entries that route every block through the out-of-place forwards."""
    out = {}
    for i, block in enumerate(diffusion_model.double_blocks):
        out[("double_block", i)] = functools.partial(_double_patch, block=block, index=i, use_checkpoint=use_checkpoint)
    for i, block in enumerate(diffusion_model.single_blocks):
        out[("single_block", i)] = functools.partial(_single_patch, block=block, use_checkpoint=use_checkpoint)
    return out


def _make_trainable_copyable(module: torch.nn.Module):
    """Weights loaded by another node are inference tensors, which autograd cannot save. Swap each one,
    in place and one at a time, for a normal tensor with the same values (peak memory: one tensor)."""
    for sub in module.modules():
        for name, p in list(sub.named_parameters(recurse=False)):
            if p.is_inference():
                setattr(sub, name, torch.nn.Parameter(p.detach().clone(), requires_grad=False))
        for name, b in list(sub.named_buffers(recurse=False)):
            if b is not None and b.is_inference():
                sub.register_buffer(name, b.clone(), persistent=name not in sub._non_persistent_buffers_set)


class FluxRunner:
    """A Flux ModelPatcher as the pack runs it: LoRA wrappers (when training), out-of-place blocks, forward calls."""

    def __init__(self, model_patcher, lora: ErasureLoRA | None = None, gradient_checkpointing=False):
        dm = check_flux(model_patcher)
        self.patcher = model_patcher.clone()
        self.lora = lora
        if lora is not None:
            for key in lora.weight_keys:
                self.patcher.add_weight_wrapper(f"diffusion_model.{key}", lora.wrapper(key))
        if not gradient_checkpointing and self.patcher.model.get_dtype() in (torch.float8_e4m3fn, torch.float8_e5m2):
            # fp8 weights are cast per call and autograd would keep every cast copy (~15 GiB on FLUX.1-dev)
            log.info("fp8 base weights: turning on gradient checkpointing")
            gradient_checkpointing = True
        self.replacements = block_replacements(dm, gradient_checkpointing)
        self.counter = PassCounter()
        self._grad_samples = 0  # samples forwarded with grad since the last backward
        self.total_blocks = len(dm.double_blocks) + len(dm.single_blocks)

    @property
    def diffusion_model(self):
        return self.patcher.model.diffusion_model

    @property
    def double_blocks(self) -> int:
        return len(self.diffusion_model.double_blocks)

    @property
    def device(self):
        return self.patcher.load_device

    @property
    def dtype(self) -> torch.dtype:
        return self.patcher.model.manual_cast_dtype or self.patcher.model.get_dtype()

    @property
    def latent_channels(self) -> int:
        return self.patcher.model.latent_format.latent_channels

    def load(self, trainable: bool = True):
        """Load onto the compute device. trainable (call outside inference mode): load fully, evicting text
        encoders and other models, and make the weights usable by autograd; else load as a sampler does."""
        if not trainable:
            comfy.model_management.load_models_gpu([self.patcher])
            return
        comfy.model_management.load_models_gpu([self.patcher], memory_required=1e20, force_full_load=True)
        _make_trainable_copyable(self.patcher.model)
        self.patcher.model.requires_grad_(False)
        if self.lora is not None:
            self.lora.to(self.device)

    def sigmas(self, steps: int) -> torch.Tensor:
        """The model's own "simple" schedule: steps + 1 sigmas from sigma_max down to 0, on the CPU."""
        return comfy.samplers.calculate_sigmas(self.patcher.get_model_object("model_sampling"), "simple", steps).cpu()

    def forward(self, x_t, sigma: torch.Tensor, context, pooled, guidance: torch.Tensor,
                capture: AttentionCapture | None = None, transformer_options: dict | None = None):
        """v (b, c, h, w) for x_t (b, c, h, w) in model space at sigma (b,), context (b, n_txt, d),
        pooled (b, d_vec), guidance (b,): one call of the Flux as ComfyUI's apply_model makes it for a
        CONST (flow) model, whose input is x_t itself and whose timestep is sigma. Every Flux call of the
        pack (Train, Inspect, the demo world's sampling and training) goes through here.

        The blocks run out of place (module docstring) under grad, with an attention capture, and in every
        pass of a training runner (one with a LoRA), so that its frozen references and its trained passes
        are the same arithmetic; otherwise they are the model's own, so an inference pass computes what a
        KSampler computes, other nodes' block patches included. transformer_options are added to the
        patcher's own. Returns v in the compute dtype, or None for a pass truncated by capture.stop_after."""
        b = x_t.shape[0]
        to = {**self.patcher.model_options.get("transformer_options", {}), **(transformer_options or {})}
        if torch.is_grad_enabled() or capture is not None or self.lora is not None:
            to["patches_replace"] = {**to.get("patches_replace", {}), "dit": self.replacements}
        to[CAPTURE_KEY] = capture
        to["sigmas"] = sigma
        device, dtype = self.device, self.dtype
        # The timestep and guidance reach the model in float32 at least, as ComfyUI's samplers pass them:
        # in bf16, sigma 0.7634 would embed as 0.7617.
        scalar_dtype = torch.promote_types(dtype, torch.float32)
        try:
            v = self.diffusion_model(x_t.to(device, dtype), sigma.to(device, scalar_dtype), context.to(device, dtype),
                                     y=pooled.to(device, dtype), guidance=guidance.to(device, scalar_dtype),
                                     transformer_options=to)
        except _StopForward:
            self.counter.forwards += b * (capture.stop_after + 1) / self.total_blocks
            return None
        self.counter.forwards += b
        if torch.is_grad_enabled():
            self._grad_samples += b
        return v

    def velocity(self, x_t, sigma: float, conds: list[TextCond], guidance: float, capture: AttentionCapture | None = None):
        """The trainer's call (runner.Runner): v for a batch x_t (b, c, h, w) at one sigma, one cond per sample."""
        b = x_t.shape[0]
        if len(conds) != b:
            raise ValueError(f"{len(conds)} text conditions for a batch of {b}")
        context = torch.cat([c.context for c in conds])
        pooled = torch.cat([c.pooled for c in conds])
        # float64 here: forward casts to the model's scalar dtype, so a float64 model sees sigma unrounded
        return self.forward(x_t, torch.full((b,), float(sigma), dtype=torch.float64), context, pooled,
                            torch.full((b,), float(guidance), dtype=torch.float64), capture)

    def count_backward(self):
        """Count a backward through every sample forwarded with grad since the last one."""
        self.counter.backwards += self._grad_samples
        self._grad_samples = 0


def build_runner(model_patcher, cfg: EraseConfig) -> FluxRunner:
    """The erasure LoRA for this MODEL and config, wrapped into a runner: the one place a LoRA is built.

    LoRA dtype: cfg.lora_dtype, except on a float64 model (the gradient checks), where it is float64 too.
    The LoRA's initial A comes from cfg.seed, so a seed fixes the whole run."""
    dm = check_flux(model_patcher)
    p = dm.params
    targets = flux_targets(cfg.targets, p.hidden_size, p.depth, p.depth_single_blocks, p.vec_in_dim)
    if model_patcher.model.get_dtype() == torch.float64:
        dtype = torch.float64
    else:
        dtype = torch.float32 if cfg.lora_dtype == "float32" else torch.bfloat16
    with torch.inference_mode(False):  # ComfyUI runs nodes in inference mode; the LoRA must be trainable
        lora = ErasureLoRA(targets, cfg.rank, generator=torch.Generator().manual_seed(cfg.seed), dtype=dtype)
    return FluxRunner(model_patcher, lora, cfg.gradient_checkpointing)


@dataclass
class Erasure:
    model: object          # the input ModelPatcher with the LoRA patched in at strength 1 (as Apply does)
    state_dict: dict       # PEFT keys -> float32 tensors, what the file stores
    result: TrainResult


def train(model_patcher, text, cfg: EraseConfig, callbacks: Callbacks | None = None,
          latents: torch.Tensor | None = None, runner: FluxRunner | None = None) -> Erasure:
    """Train an erasure on a ComfyUI MODEL and patch it in with ComfyUI's LoRA loader.

    text: a TextEncoder (ClipText for a CLIP object). latents: optional (n, c, h, w) concept latents in
    the latent format of the MODEL's inputs (e.g. VAE Encode), converted to model space here.
    runner: a runner from build_runner, when the caller needs its LoRA after a failure."""
    runner = runner or build_runner(model_patcher, cfg)
    concept_latents = None
    if latents is not None:
        with torch.inference_mode(False):
            concept_latents = model_patcher.model.process_latent_in(latents.clone())
    result = train_erasure(cfg, runner, text, callbacks, concept_latents)
    state_dict = peft_state_dict(runner.lora, torch.float32)
    erased, _ = comfy.sd.load_lora_for_models(model_patcher, None, state_dict, 1.0, 0)
    return Erasure(erased, state_dict, result)

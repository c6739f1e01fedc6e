"""Scoring an erasure in the demo world the way the paper does: Acc_e, Acc_ir, Acc_g, and attention IoU.

Pictures are sampled through ComfyUI's model object (`BaseModel.apply_model`, the model's own "simple"
sigma schedule, Euler: what KSampler computes with euler / simple / cfg 1 and FluxGuidance), so an
erasure applied by ComfyUI's LoRA loader is scored exactly as a workflow would draw it. The world's VAE
decodes them and the judge reads shape and colour. Every `comfy` import is inside a function.

Prompt groups for a target concept (a shape or a colour of shapes.py):
  target   every full caption template with the target word, over all values of the other attribute
  synonym  the same with each synonym of a shape (colours have none in this world)
  other    the same templates for every other value of the target's attribute (Acc_ir)
  anchor   the ESD anchor prompt alone: how often it draws the target (Acc_e's floor)
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..config import EraseConfig
from . import model as world_model
from . import shapes
from .vae import model_space_to_pixels

GUIDANCE = 3.5  # FluxGuidance's default
SAMPLE_STEPS = 16


@dataclass
class PromptGroup:
    name: str
    texts: list[str]
    shape_idx: torch.Tensor   # (n,) what each prompt asks for; -1 where the prompt names no shape
    colour_idx: torch.Tensor  # (n,) likewise for the colour


def kind_of(target: str) -> str:
    if target in shapes.SHAPES:
        return "shape"
    if target in shapes.COLOURS:
        return "colour"
    raise ValueError(f"target {target!r} is not a shape {shapes.SHAPES} or a colour {shapes.COLOUR_NAMES} of the demo world")


def _full_prompts(shape_words: list[tuple[str, int]], colours: list[int]) -> list[tuple[str, int, int]]:
    return [(t.format(c=shapes.COLOUR_NAMES[c], s=word), s, c)
            for word, s in shape_words for c in colours for t in shapes.FULL_TEMPLATES]


def prompt_groups(target: str, anchor: str, min_samples: int = 100) -> list[PromptGroup]:
    """The groups of the module docstring, each with at least min_samples prompts (every prompt of a group
    repeated equally often)."""
    all_shapes, all_colours = range(len(shapes.SHAPES)), list(range(len(shapes.COLOURS)))
    if kind_of(target) == "shape":
        t = shapes.SHAPES.index(target)
        groups = {"target": _full_prompts([(target, t)], all_colours),
                  "synonym": _full_prompts([(w, t) for w in shapes.SYNONYMS[target]], all_colours),
                  "other": _full_prompts([(shapes.SHAPES[s], s) for s in all_shapes if s != t], all_colours)}
    else:
        t = shapes.COLOUR_NAMES.index(target)
        names = [(shapes.SHAPES[s], s) for s in all_shapes]
        groups = {"target": _full_prompts(names, [t]), "synonym": [],
                  "other": _full_prompts(names, [c for c in all_colours if c != t])}
    groups["anchor"] = [(anchor, -1, -1)]
    out = []
    for name, rows in groups.items():
        if not rows:
            continue
        rows = rows * math.ceil(min_samples / len(rows))
        out.append(PromptGroup(name, [r[0] for r in rows], torch.tensor([r[1] for r in rows]),
                               torch.tensor([r[2] for r in rows])))
    return out


@torch.no_grad()
def sample_images(patcher, clip, texts: list[str], seed: int, steps: int = SAMPLE_STEPS,
                  guidance: float = GUIDANCE, batch: int = 128) -> torch.Tensor:
    """Pictures (n, 3, 32, 32) in [0, 1], one per text, from ComfyUI's model with its patches (LoRAs)
    applied. Seeded: the noise of picture i depends only on (seed, i)."""
    import comfy.model_management
    import comfy.samplers
    comfy.model_management.load_models_gpu([patcher])
    model = patcher.model
    device = patcher.load_device
    sigmas = comfy.samplers.calculate_sigmas(model.model_sampling, "simple", steps).to(device)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(texts), 16, 16, 16), generator=gen)
    pictures = []
    for start in range(0, len(texts), batch):
        chunk = texts[start:start + batch]
        t5_ids, clip_l_ids = world_model.tokenize(clip, chunk)
        context, pooled = world_model.encode(clip.cond_stage_model, t5_ids, clip_l_ids)
        context, pooled = context.to(device), pooled.to(device)
        g = torch.full((len(chunk),), guidance, device=device)
        x = noise[start:start + batch].to(device) * sigmas[0]  # CONST noise scaling of an empty latent
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            s = sigma.expand(len(chunk))
            denoised = model.apply_model(x, s, c_crossattn=context, y=pooled, guidance=g,
                                         transformer_options={"sigmas": s})
            x = x + (x - denoised) / sigma * (sigma_next - sigma)  # Euler, as comfy's sample_euler
        # x is the model-space latent (what the transformer sees): pixels in [-1, 1] (vae.py)
        pictures.append(((model_space_to_pixels(x.float().cpu()) + 1) / 2).clamp(0, 1))
    return torch.cat(pictures)


@dataclass
class GroupScore:
    target_rate: float      # share judged to show the target (shape or colour)
    same_kind_rate: float   # share judged to show the prompted value of the target's kind (Acc_ir on "other")
    prompted_rate: float    # share judged to show everything the prompt names (both attributes)
    other_kept: float       # share whose other attribute (not the target's kind) is still the prompted one


def score(judge, images: torch.Tensor, group: PromptGroup, target: str) -> GroupScore:
    shape_pred, colour_pred = judge.predict(images)
    shape_ok = (shape_pred == group.shape_idx) | (group.shape_idx < 0)
    colour_ok = (colour_pred == group.colour_idx) | (group.colour_idx < 0)
    if kind_of(target) == "shape":
        target_hit, same_kind, kept = shape_pred == shapes.SHAPES.index(target), shape_ok, colour_ok
    else:
        target_hit, same_kind, kept = colour_pred == shapes.COLOUR_NAMES.index(target), colour_ok, shape_ok
    return GroupScore(*(x.float().mean().item() for x in (target_hit, same_kind, shape_ok & colour_ok, kept)))


def score_groups(patcher, clip, judge, target: str, groups: list[PromptGroup], seed: int):
    """Sample every group (sample_images, the same seed for each) and score it: ({name: GroupScore},
    {name: pictures (n, 3, 32, 32)})."""
    scores, pictures = {}, {}
    for g in groups:
        pictures[g.name] = sample_images(patcher, clip, g.texts, seed=seed)
        scores[g.name] = score(judge, pictures[g.name], g, target)
    return scores, pictures


def iou(soft_mask: torch.Tensor, truth: torch.Tensor, threshold: float = 0.5) -> float:
    """IoU of a soft mask in [0, 1] thresholded at `threshold` with a boolean mask of the same (H, W)."""
    pred = soft_mask >= threshold
    union = (pred | truth).sum().item()
    return (pred & truth).sum().item() / union if union else 1.0


def attention_probes(target: str, n: int, seed: int) -> tuple[list[str], shapes.Batch]:
    """n generator pictures that show the target (other attribute random) and their plain captions
    "a {colour} {shape}", for IoU of the target word's map with the ground-truth mask."""
    rng = np.random.default_rng(seed)
    if kind_of(target) == "shape":
        shape_idx, colour_idx = np.full(n, shapes.SHAPES.index(target)), rng.integers(0, len(shapes.COLOURS), n)
    else:
        shape_idx, colour_idx = rng.integers(0, len(shapes.SHAPES), n), np.full(n, shapes.COLOUR_NAMES.index(target))
    batch = shapes.draw(shape_idx, colour_idx, rng)
    texts = [f"a {shapes.COLOUR_NAMES[c]} {shapes.SHAPES[s]}" for s, c in zip(shape_idx, colour_idx)]
    return texts, batch


# --- Erasing in the world ---------------------------------------------------------------------------

# Each target with an anchor that does not depict it (ESD pulls the concept toward the anchor, so the
# anchor's own rate of drawing the target is the floor of Acc_e), its synonyms and K = 3 other concepts
# of the same kind for Eq. 5.
TARGETS = {
    "circle": dict(prompt="a circle", anchor="a square", synonyms=shapes.SYNONYMS["circle"],
                   irrelevant=("square", "triangle", "cross")),
    "triangle": dict(prompt="a triangle", anchor="a cross", synonyms=shapes.SYNONYMS["triangle"],
                     irrelevant=("circle", "square", "cross")),
    "red": dict(prompt="a red shape", anchor="a blue shape", irrelevant=("green", "blue", "yellow")),
}
# The node's defaults, at the world's size (a 16x16 latent is 128 "pixels" in the config's VAE-x8 terms):
# the example workflow's Train Erasure LoRA runs exactly this config.
WORLD_RUN = dict(resolution=128)


def erasure_config(target: str, **changes) -> EraseConfig:
    return EraseConfig(concept=target, **{**TARGETS[target], **WORLD_RUN, **changes})


def erase(patcher, clip, cfg):
    """Train an erasure LoRA on the world's model and apply it as Apply Erasure LoRA does (ComfyUI's LoRA
    loader, strength 1). Returns (erased ModelPatcher, TrainResult, PEFT state dict)."""
    import comfy.sd
    from ..comfy_flux import ClipText, FluxRunner
    from ..lora import ErasureLoRA, flux_targets
    from ..lora_file import peft_state_dict
    from ..trainer import train_erasure
    p = patcher.model.diffusion_model.params
    lora = ErasureLoRA(flux_targets(cfg.targets, p.hidden_size, p.depth, p.depth_single_blocks, p.vec_in_dim),
                       cfg.rank, generator=torch.Generator().manual_seed(cfg.seed))
    with torch.inference_mode(False), torch.enable_grad():
        result = train_erasure(cfg, FluxRunner(patcher, lora), ClipText(clip))
    state_dict = peft_state_dict(lora, torch.float32)
    erased, _ = comfy.sd.load_lora_for_models(patcher, None, state_dict, 1.0, 0)
    return erased, result, state_dict

"""Scoring an erasure in the demo world the way the paper does: Acc_e, Acc_ir, Acc_g, and attention IoU.

Pictures come from a `sample(texts, seed) -> (n, 3, 32, 32)` function; in the pack that is
comfy/demo_world.py's `sample_images` on a ModelPatcher (what KSampler draws with euler / simple / cfg 1
and FluxGuidance), so an erasure applied by ComfyUI's LoRA loader is scored exactly as a workflow would
draw it. The judge reads shape and colour.

Prompt groups for a target concept (a shape or a colour of shapes.py), on a set of caption templates
(the world's own, or a held-out set the world never saw):
  target   every template with the target word, over all values of the other attribute
  synonym  the same with each synonym of a shape (colours have none in this world)
  other    the same templates for every other value of the target's attribute (Acc_ir)
  anchor   the ESD anchor prompts: how often they draw the target (Acc_e's floor)
"""

import math
import statistics
from dataclasses import dataclass

import numpy as np
import torch

from ..attention_maps import soft_masks, upsample
from ..config import EraseConfig
from . import shapes


TOKEN_PX = 4  # pixels per image token on each side: the VAE halves the picture, Flux patches 2x2 latents


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


def _full_prompts(shape_words: list[tuple[str, int]], colours: list[int], templates) -> list[tuple[str, int, int]]:
    return [(t.format(c=shapes.COLOUR_NAMES[c], s=word), s, c)
            for word, s in shape_words for c in colours for t in templates]


def prompt_groups(target: str, anchors, min_samples: int = 100,
                  templates=shapes.FULL_TEMPLATES) -> list[PromptGroup]:
    """The groups of the module docstring, each with at least min_samples prompts (every prompt of a group
    repeated equally often). anchors: one anchor prompt or several; templates: "{c}" colour, "{s}" shape."""
    all_shapes, all_colours = range(len(shapes.SHAPES)), list(range(len(shapes.COLOURS)))
    if kind_of(target) == "shape":
        t = shapes.SHAPES.index(target)
        groups = {"target": _full_prompts([(target, t)], all_colours, templates),
                  "synonym": _full_prompts([(w, t) for w in shapes.SYNONYMS[target]], all_colours, templates),
                  "other": _full_prompts([(shapes.SHAPES[s], s) for s in all_shapes if s != t], all_colours, templates)}
    else:
        t = shapes.COLOUR_NAMES.index(target)
        names = [(shapes.SHAPES[s], s) for s in all_shapes]
        groups = {"target": _full_prompts(names, [t], templates), "synonym": [],
                  "other": _full_prompts(names, [c for c in all_colours if c != t], templates)}
    groups["anchor"] = [(a, -1, -1) for a in ([anchors] if isinstance(anchors, str) else anchors)]
    out = []
    for name, rows in groups.items():
        if not rows:
            continue
        rows = rows * math.ceil(min_samples / len(rows))
        out.append(PromptGroup(name, [r[0] for r in rows], torch.tensor([r[1] for r in rows]),
                               torch.tensor([r[2] for r in rows])))
    return out


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


def score_groups(sample, judge, target: str, groups: list[PromptGroup], seed: int):
    """Sample every group (sample(texts, seed), the same seed for each) and score it: ({name: GroupScore},
    {name: pictures (n, 3, 32, 32)})."""
    scores, pictures = {}, {}
    for g in groups:
        pictures[g.name] = sample(g.texts, seed)
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


def fixed_map_miou(target: str, probes: int, seed: int) -> float:
    """mIoU, on the attention_probes pictures, of one map that never looks at the picture: the mean true mask
    of the same pictures on the image-token grid (4 px a token: the VAE halves, Flux's patch is 2), soft-masked
    and upsampled as the Inspect node does. Every object sits near the centre, so this is what a map scores by
    position alone: a word's map localises the object only where it beats this."""
    _, batch = attention_probes(target, probes, seed=seed)
    mean_mask = torch.nn.functional.avg_pool2d(batch.masks.float().mean(0)[None, None], TOKEN_PX)[0]  # (1, 8, 8)
    soft = upsample(soft_masks(mean_mask), tuple(batch.masks.shape[1:]))[0]  # (32, 32)
    return statistics.fmean(iou(soft, truth) for truth in batch.masks)


def token_regions(mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The image tokens (TOKEN_PX-px squares) of a (H, W) bool true mask by where they lie: "inside" the object,
    on its "edge" (part object), "next" to it (touching an inside or edge token) or "far"; (H/4, W/4) bool each."""
    cover = torch.nn.functional.avg_pool2d(mask.float()[None, None], TOKEN_PX)[0, 0]  # object share per token
    touches = torch.nn.functional.max_pool2d((cover > 0).float()[None, None], 3, stride=1, padding=1)[0, 0] > 0
    return {"inside": cover == 1, "edge": (cover > 0) & (cover < 1), "next": (cover == 0) & touches, "far": ~touches}


def probe_scores(inspect, patcher, clip, vae, target: str, probes: int, seed: int, mode: str = "attention") -> dict:
    """One Inspect run per attention_probes picture (node defaults, one mode), two readings of its map:
    "miou": mean IoU of the word's soft mask at 0.5 with the true mask; "regions": {region: mean of the soft
    mask on the token grid over the token_regions region}, averaged over the pictures that have the region. An IoU
    at 4-px tokens cannot tell a map on the object's inside from one on its edge or on the background next to it;
    the regions can. inspect: the node's runtime function (nodes/inspect_runtime.py), passed in: this module
    imports no host."""
    texts, batch = attention_probes(target, probes, seed=seed)
    ious, regions = [], {}
    for i, text in enumerate(texts):
        image = batch.images[i:i + 1].permute(0, 2, 3, 1)  # (1, 32, 32, 3) IMAGE
        with torch.inference_mode():
            result = inspect(patcher, clip, text, target, image=image, vae=vae, mode=mode)
        ious.append(iou(result.masks[0], batch.masks[i]))
        token_mask = soft_masks(result.maps)[0]  # (8, 8): the soft mask before upsampling
        for name, tokens in token_regions(batch.masks[i]).items():
            if tokens.any():
                regions.setdefault(name, []).append(token_mask[tokens].mean().item())
    return {"miou": statistics.fmean(ious), "regions": {name: statistics.fmean(v) for name, v in regions.items()}}


def attention_miou(inspect, patcher, clip, vae, target: str, probes: int, seed: int,
                   modes: tuple[str, ...] = ("attention", "output_space")) -> dict:
    """{"raw": mIoU, "output_space": mIoU} (only the keys of `modes`) of the target word's map at the
    Attention Map Inspect node's defaults (probe_scores)."""
    return {"raw" if mode == "attention" else "output_space":
            probe_scores(inspect, patcher, clip, vae, target, probes, seed, mode)["miou"] for mode in modes}


# --- Erasing in the world ---------------------------------------------------------------------------

# Each target with the word its prompts are anchored to (ESD pulls the concept toward the anchor, so the
# anchor's own rate of drawing the target is the floor of Acc_e), its synonyms and K = 3 other concepts
# of the same kind (Eq. 5 and the retain set). The default form erases the target from one prompt per
# value of the other attribute ("a red circle", "a red square", ...), each anchored to the same prompt
# with the anchor word ("a red circle" -> "a red square"), or, for "red", with the word removed (the
# node's default: "a circle", which the world draws white); the paper form is the released code's one
# prompt and one anchor. Why red has no anchor word: a q/k LoRA cannot make "a red circle" read "blue"
# where no text position carries blue, and the world's T5 is local (docs/demo_world.md; erasure_quality
# measures "blue" beside it); a shape removed has no answer the judge can tell from the target ("a red"
# draws any shape), so the shapes keep theirs.
TARGETS = {
    "circle": dict(anchor_word="square", synonyms=shapes.SYNONYMS["circle"], irrelevant=("square", "triangle", "cross")),
    "triangle": dict(anchor_word="cross", synonyms=shapes.SYNONYMS["triangle"], irrelevant=("circle", "square", "cross")),
    "red": dict(anchor_word="", irrelevant=("green", "blue", "yellow")),
}
PAPER_FORM = {"circle": dict(prompt="a circle", anchor="a square"),
              "triangle": dict(prompt="a triangle", anchor="a cross"),
              "red": dict(prompt="a red shape", anchor="a blue shape")}
FORMS = ("default", "paper")
# The node's defaults, at the world's size (a 16x16 latent is 128 "pixels" in the config's VAE-x8 terms):
# the example workflow's Train Erasure LoRA runs exactly this config.
WORLD_RUN = dict(resolution=128)


def target_prompts(target: str) -> str:
    """The default form's prompt lines: "a {colour} {shape}" for every value of the other attribute."""
    if kind_of(target) == "shape":
        return "\n".join(f"a {c} {target}" for c in shapes.COLOUR_NAMES)
    return "\n".join(f"a {target} {s}" for s in shapes.SHAPES)


def erasure_config(target: str, form: str = "default", **changes) -> EraseConfig:
    words = dict(TARGETS[target])
    if form == "paper":
        words.pop("anchor_word")
        words.update(PAPER_FORM[target])
    else:
        words["prompt"] = target_prompts(target)
    return EraseConfig(concept=target, **{**words, **WORLD_RUN, **changes})

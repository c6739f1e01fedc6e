"""Training and evaluating the demo world: rectified flow on ComfyUI's Flux module and T5, jointly.

Model space: x0 (b, 16, 16, 16) are the pixel-unshuffled images in [-1, 1] (vae.py), noise e ~ N(0, I),
x_t = (1 - t) x0 + t e with t ~ U(0, 1), and the Flux predicts v = e - x0 (ComfyUI's CONST sampling:
x0 = x_t - t v), as in FLUX.1. Loss: mean squared error on v.

The pooled vector y is made caption-independent: with probability 1 - p_pooled_true a sample's y is the
pooled CLIP-L vector of a random caption from the whole caption set (another picture's, usually), and
only with p_pooled_true its own. The tokens always tell the truth, so the model learns to read the
concept from the T5 stream, as FLUX.1 does; y stays in distribution (always a real encoder output).
`swap_test` measures it. Guidance is drawn from U(1, 5) (no distillation: the model learns to ignore it).
Times t are U(0, 1) warped as ComfyUI warps Flux's sampling grid (`time_shift`), so training spends its
samples at the noise levels where the sampler takes its steps (the high ones, where the shape is decided).
CLIP-L keeps its seeded random weights (ComfyUI's CLIP adds residuals in place, and a pooled vector that
carries no information needs no training); T5 is trained with the Flux.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..concepts import concept_token_idx
from . import shapes
from . import text as world_text
from .vae import pixels_to_model_space


# ComfyUI's ModelSamplingFlux: sigma = flux_time_shift(mu=1.15, 1, t) = s t / (1 + (s - 1) t), s = e^1.15.
TIME_SHIFT = math.exp(1.15)


def time_shift(t: torch.Tensor) -> torch.Tensor:
    return TIME_SHIFT * t / (1 + (TIME_SHIFT - 1) * t)


@dataclass
class TextTable:
    """Captions tokenized by ComfyUI's FluxTokenizer, each once: the closed caption set up front, and any
    other caption (one with a filler word, an extra prompt) when first met. CLIP-L is frozen (its seeded
    random weights), so a caption's pooled vector is computed once too: pooled (n_captions, 32). The
    first `n_closed` rows are the closed set, from which flow_loss draws the swapped pooled vectors."""
    clip: object
    captions: list[str]
    index: dict[str, int]
    t5_ids: list[list[int]]
    pooled: torch.Tensor
    n_closed: int

    @classmethod
    def build(cls, clip, extra: tuple[str, ...] = ()) -> "TextTable":
        table = cls(clip, [], {}, [], torch.zeros(0, 0), 0)
        table.add(sorted(set(shapes.all_captions()) | set(extra)))
        table.n_closed = len(table.captions)
        return table

    def add(self, texts: list[str]):
        """Tokenize and pool the captions not yet in the table (in order of first appearance)."""
        new = list(dict.fromkeys(t for t in texts if t not in self.index))
        if not new:
            return
        t5_ids, clip_l_ids = world_text.tokenize(self.clip, new)
        _, pooled = world_text.encode(self.clip.cond_stage_model, t5_ids[:1], clip_l_ids)
        self.index.update({t: len(self.captions) + i for i, t in enumerate(new)})
        self.captions += new
        self.t5_ids += t5_ids
        self.pooled = pooled if self.pooled.numel() == 0 else torch.cat([self.pooled, pooled])

    def context(self, clip_model, texts: list[str]) -> torch.Tensor:
        """T5 stream (b, 16, 64) for `texts`, each distinct caption encoded once; differentiable."""
        self.add(texts)
        rows = [self.index[t] for t in texts]
        unique = sorted(set(rows))
        context, _ = clip_model.t5xxl([self.t5_ids[r] for r in unique])
        return context[torch.tensor([unique.index(r) for r in rows])]

    def pooled_for(self, texts: list[str]) -> torch.Tensor:
        self.add(texts)
        return self.pooled[torch.tensor([self.index[t] for t in texts])]

    def encode(self, clip_model, texts: list[str]):
        return self.context(clip_model, texts), self.pooled_for(texts)


# `velocity` below is (x_t (b, 16, h, w), t (b,), context, pooled, guidance (b,)) -> v (b, 16, h, w): the
# adapter's FluxRunner.forward, whose blocks run out of place under grad, so that autograd works.
# `sample` is (context (b, n, 64), pooled (b, 32), seed, attention_override=None) -> pictures (b, 3, 32, 32) in
# [0, 1]: the adapter's Euler through the same runner (comfy/demo_world.py: cond_sampler), what KSampler draws.


def flow_loss(velocity, clip_model, table: TextTable, images, texts, gen: torch.Generator, p_pooled_true: float):
    """Rectified-flow loss for images (b, 3, 32, 32) in [0, 1] with captions `texts`."""
    b = images.shape[0]
    x0 = pixels_to_model_space(images * 2 - 1)                                     # (b, 16, 16, 16)
    noise = torch.randn(x0.shape, generator=gen)
    t = time_shift(torch.rand((b,), generator=gen))
    x_t = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
    swap = torch.rand((b,), generator=gen) >= p_pooled_true
    other = torch.randint(0, table.n_closed, (b,), generator=gen)
    pooled_texts = [table.captions[o] if s else txt for txt, s, o in zip(texts, swap.tolist(), other.tolist())]
    context = table.context(clip_model, texts)
    pooled = table.pooled_for(pooled_texts)
    guidance = 1 + 4 * torch.rand((b,), generator=gen)
    v_pred = velocity(x_t, t, context, pooled, guidance)
    return F.mse_loss(v_pred, noise - x0)


def prompt_grid(per_pair: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Prompts "a {colour} {shape}" for every pair, per_pair times: texts, shape_idx, colour_idx."""
    texts, s_idx, c_idx = [], [], []
    for si, shape in enumerate(shapes.SHAPES):
        for ci, colour in enumerate(shapes.COLOUR_NAMES):
            texts += [f"a {colour} {shape}"] * per_pair
            s_idx += [si] * per_pair
            c_idx += [ci] * per_pair
    return texts, torch.tensor(s_idx), torch.tensor(c_idx)


@torch.no_grad()
def prompt_accuracy(sample, clip_model, table, judge, seed: int, per_pair: int = 4):
    """(shape accuracy, colour accuracy) of the judge on samples of every "a {colour} {shape}" prompt."""
    texts, s_idx, c_idx = prompt_grid(per_pair)
    context, pooled = table.encode(clip_model, texts)
    images = sample(context, pooled, seed)
    s_pred, c_pred = judge.predict(images)
    return (s_pred == s_idx).float().mean().item(), (c_pred == c_idx).float().mean().item()


@torch.no_grad()
def swap_test(sample, clip_model, table, judge, target: str, seed: int, n: int = 64,
              neutral: str = "a shape") -> dict[str, float]:
    """Share of samples the judge calls `target` (a shape, or a colour) when the concept reaches the model by
    one path only: tokens of "a {shape}" (or "a {colour} shape") with the pooled vector of `neutral`, and the
    other way round; both paths and neither as references."""
    if target in shapes.SHAPES:
        concept, kind, index = f"a {target}", 0, shapes.SHAPES.index(target)
    else:
        concept, kind, index = f"a {target} shape", 1, shapes.COLOUR_NAMES.index(target)
    ctx_c, pool_c = table.encode(clip_model, [concept] * n)
    ctx_n, pool_n = table.encode(clip_model, [neutral] * n)
    out = {}
    for name, ctx, pool in (("both", ctx_c, pool_c), ("tokens_only", ctx_c, pool_n),
                            ("pooled_only", ctx_n, pool_c), ("neither", ctx_n, pool_n)):
        images = sample(ctx, pool, seed)
        out[name] = (judge.predict(images)[kind] == index).float().mean().item()
    return out


@torch.no_grad()
def word_token_test(sample, clip_model, table, judge, prompt: str, word: str, other_word: str, seed: int,
                    n: int = 64) -> dict[str, float]:
    """Which T5 positions carry a word's concept to the Flux? `prompt` names `word` (a shape or a colour); the
    other prompt names `other_word` in its place. Context of `prompt` with the T5 outputs at the positions
    where the two prompts' tokens differ (the word's own tokens) taken from the other prompt ("word_token"),
    or every other position (the rest of the prompt, its end token and the padding: "other_positions"), or all
    of them ("all", the control): share of n pictures the judge calls `other_word`. The pooled vector stays
    the prompt's. A word read from its own token gives word_token near all and other_positions near 0; the
    Attention Map Inspect node reads the word's own token, so its map can only show what that token carries."""
    kind, index = ((0, shapes.SHAPES.index(other_word)) if other_word in shapes.SHAPES
                   else (1, shapes.COLOUR_NAMES.index(other_word)))
    other = " ".join(other_word if w == word else w for w in prompt.split())
    if other == prompt:
        raise ValueError(f"word_token_test: {word!r} is not a word of {prompt!r}")
    context, pooled = table.encode(clip_model, [prompt] * n)
    context_other, _ = table.encode(clip_model, [other] * n)
    ids, ids_other = (torch.tensor(table.t5_ids[table.index[t]]) for t in (prompt, other))
    differ = ids != ids_other  # (16,) the word's own token positions
    out = {}
    for name, take in (("word_token", differ), ("other_positions", ~differ), ("all", torch.ones_like(differ))):
        images = sample(torch.where(take[None, :, None], context_other, context), pooled, seed)
        out[name] = (judge.predict(images)[kind] == index).float().mean().item()
    return out


class WordKeyMask:
    """An `optimized_attention_override` (called by ComfyUI as attention_maps.InspectAttentionOverride is) that
    keeps some blocks from reading a word: in their attention calls the hidden queries may not attend to the
    word's positions (those logits are -inf). Every other call, query and key is as before. Text comes first in
    the joint sequence of both kinds of block, so a T5 position is a joint position.
    word_idx: (k,) long T5 positions; blocks: {(block_type, block_index)}, block_type "double" or "single";
    hidden_queries: (b, n) bool per picture of the batch, or None for every query; the word's own positions
    always keep reading themselves."""

    def __init__(self, word_idx: torch.Tensor, blocks, hidden_queries: torch.Tensor | None = None):
        self.word_idx, self.blocks, self.hidden_queries, self.calls = word_idx, frozenset(blocks), hidden_queries, 0

    def __call__(self, func, q, k, v, heads, *args, **kwargs):
        to = kwargs.get("transformer_options") or {}
        if (to.get("block_type"), to.get("block_index")) in self.blocks:
            if not kwargs.get("skip_reshape") or kwargs.get("mask") is not None:
                raise RuntimeError("WordKeyMask expects ComfyUI's Flux attention without a mask: q (b, heads, n, d), "
                                   "skip_reshape")
            n, idx = q.shape[2], self.word_idx.to(q.device)
            if self.hidden_queries is not None and self.hidden_queries.shape[-1] != n:
                raise ValueError(f"WordKeyMask: hidden_queries covers {self.hidden_queries.shape[-1]} positions, "
                                 f"the attention has {n} (text, then the image tokens in row-major order)")
            hidden = (torch.ones(n, dtype=torch.bool, device=q.device) if self.hidden_queries is None
                      else self.hidden_queries.to(q.device).clone())  # (n,) or (b, n)
            hidden[..., idx] = False
            mask = torch.zeros(*hidden.shape, n, dtype=q.dtype, device=q.device)  # additive, as ComfyUI passes it to SDPA
            mask[..., idx] = mask[..., idx].masked_fill(hidden[..., None], float("-inf"))
            kwargs["mask"] = mask if mask.ndim == 2 else mask[:, None]  # (n, n), or (b, 1, n, n): every head alike
            self.calls += 1
        return func(q, k, v, heads, *args, **kwargs)


def _word_positions(tokenizer, texts: list[str], words: list[str]) -> torch.Tensor:
    """(k,) T5 positions of each prompt's word (concepts.concept_token_idx), which the prompts must share:
    WordKeyMask hides one set of positions for the whole batch."""
    found = {tuple(concept_token_idx(tokenizer, t, w).tolist()) for t, w in set(zip(texts, words))}
    if len(found) != 1:
        raise ValueError(f"the prompts' words sit at different T5 positions {sorted(found)}: one batch needs one")
    return torch.tensor(found.pop())


def _attributes(per_pair: int, table, clip_model):
    """prompt_grid's prompts encoded, and per attribute (name, named index (b,), judge.predict output, word positions)."""
    texts, s_idx, c_idx = prompt_grid(per_pair)
    context, pooled = table.encode(clip_model, texts)
    tokenizer = table.clip.tokenizer
    return context, pooled, (
        ("shape", s_idx, 0, _word_positions(tokenizer, texts, [shapes.SHAPES[i] for i in s_idx])),
        ("colour", c_idx, 1, _word_positions(tokenizer, texts, [shapes.COLOUR_NAMES[i] for i in c_idx])))


@torch.no_grad()
def block_reading_test(sample, clip_model, table, judge, conditions: dict, seed: int,
                       per_pair: int = 8) -> dict[str, dict[str, float]]:
    """Which blocks' reading of a word the drawing needs. For the shape word and the colour word of every
    "a {colour} {shape}" prompt (per_pair pictures each), WordKeyMask keeps the blocks of each condition
    ({name: {(block_type, index)}}; an empty set is the control) from reading that word: share of the pictures
    judged to have the named attribute, {"shape" | "colour": {name: rate}}. A block the drawing needs drops the
    rate towards what a prompt without the word gives (the four shapes' mean falls to 25% when no block reads
    it); a block it does not need leaves it. The Inspect node maps one block's attention; this says whether that
    block's reading is what draws the word, or another block's."""
    context, pooled, attributes = _attributes(per_pair, table, clip_model)
    out = {}
    for kind, named, judged, word_idx in attributes:  # judged: which output of judge.predict
        out[kind] = {}
        for name, blocks in conditions.items():
            images = sample(context, pooled, seed, attention_override=WordKeyMask(word_idx, blocks) if blocks else None)
            out[kind][name] = (judge.predict(images)[judged] == named).float().mean().item()
    return out


OBJECT_CONTRAST = 0.1  # a drawn pixel belongs to the object where a channel differs this much from the background
QUERY_GROUPS = ("inside", "edge", "background", "every image query", "the other text tokens", "every query")


@torch.no_grad()
def query_reading_test(sample, clip_model, table, judge, block: tuple[str, int], seed: int, token_px: int,
                       per_pair: int = 8) -> dict[str, dict[str, float]]:
    """Which queries of one block read a word the drawing needs: block_reading_test with the word hidden from
    one group of queries only (QUERY_GROUPS). The image tokens are grouped by each picture as drawn with nothing
    hidden (its pixels OBJECT_CONTRAST off the background, token_px-px tokens): "inside" the object, on its
    "edge" (part object) or "background"; "the other text tokens" are the prompt's other positions, through
    which a block's text stream can pass a word on. {"shape" | "colour": {"none" | group: rate}}."""
    context, pooled, attributes = _attributes(per_pair, table, clip_model)
    drawn = sample(context, pooled, seed)  # (b, 3, H, W)
    background = torch.tensor(shapes.BACKGROUND)[None, :, None, None]
    object_px = ((drawn - background).abs().amax(1) > OBJECT_CONTRAST).float()  # (b, H, W)
    cover = F.avg_pool2d(object_px[:, None], token_px).flatten(1)  # (b, n_img) object share per image token
    b, n_txt = context.shape[:2]
    text, no_text = torch.ones(b, n_txt, dtype=torch.bool), torch.zeros(b, n_txt, dtype=torch.bool)
    every_image, no_image = torch.ones_like(cover, dtype=torch.bool), torch.zeros_like(cover, dtype=torch.bool)
    image = {"inside": cover == 1, "edge": (cover > 0) & (cover < 1), "background": cover == 0,
             "every image query": every_image}
    groups = {**{name: torch.cat([no_text, tokens], 1) for name, tokens in image.items()},  # (b, n_txt + n_img)
              "the other text tokens": torch.cat([text, no_image], 1), "every query": torch.cat([text, every_image], 1)}
    out = {}
    for kind, named, judged, word_idx in attributes:
        out[kind] = {"none": (judge.predict(drawn)[judged] == named).float().mean().item()}
        for name in QUERY_GROUPS:
            images = sample(context, pooled, seed, attention_override=WordKeyMask(word_idx, {block}, groups[name]))
            out[kind][name] = (judge.predict(images)[judged] == named).float().mean().item()
    return out

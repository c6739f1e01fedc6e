"""The demo world's captions as token ids and encodings, on a ComfyUI CLIP object (duck-typed: nothing
here imports the host). A caption is T5_TOKENS T5 tokens (the tokenizer pads to that length)."""

import torch

T5_TOKENS = 16


def tokenize(clip, texts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids with ComfyUI's FluxTokenizer: T5 (each T5_TOKENS long) and CLIP-L (each 77 long)."""
    t5, clip_l = [], []
    for text in texts:
        tokens = clip.tokenize(text)
        t5.append([t for t, _ in tokens["t5xxl"][0]])
        clip_l.append([t for t, _ in tokens["l"][0]])
        if len(t5[-1]) != T5_TOKENS:
            raise ValueError(f"caption {text!r} is {len(t5[-1])} T5 tokens; the demo world allows {T5_TOKENS}")
    return t5, clip_l


def encode(clip_model, t5_ids: list[list[int]], clip_l_ids: list[list[int]]):
    """Batched text encoding: context (b, 16, 64) from T5 (differentiable), pooled (b, 32) from CLIP-L
    (no gradient: ComfyUI's CLIP adds residuals in place, and the world keeps CLIP-L at its seeded
    random weights, see training.py). Same values as CLIPTextEncode (tests check it); `clip_model` is
    `clip.cond_stage_model`."""
    context, _ = clip_model.t5xxl(t5_ids)
    with torch.no_grad():
        _, pooled = clip_model.clip_l(clip_l_ids)
    return context, pooled

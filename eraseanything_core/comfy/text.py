"""ComfyUI's CLIP object as the trainer's `TextEncoder` (runner.py): prompts with their concept-token
positions, and batched pooled CLIP-L vectors for ranking candidate concepts."""

import torch

from ..concepts import concept_token_idx
from ..runner import TextCond


def encode_prompt(clip, text: str, token_idx: torch.Tensor) -> TextCond:
    """Encode with ComfyUI's CLIP object (T5 stream + pooled CLIP-L), as plain (non-inference) tensors."""
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(text))
    context, extras = cond[0][0], cond[0][1]
    pooled = extras.get("pooled_output")
    if pooled is None:
        raise ValueError("the CLIP input gives no pooled output: connect Flux's DualCLIPLoader (t5xxl + clip_l).")
    return TextCond(text=text, context=context.detach().clone().cpu(), pooled=pooled.detach().clone().cpu(),
                    token_idx=token_idx.clone())


class ClipText:
    """The trainer's text side on a ComfyUI CLIP object: prompts with their concept-token positions."""

    def __init__(self, clip):
        self.clip = clip

    def encode(self, text: str, concept_word: str | None) -> TextCond:
        idx = (concept_token_idx(self.clip.tokenizer, text, concept_word) if concept_word
               else torch.zeros(0, dtype=torch.long))
        return encode_prompt(self.clip, text, idx)

    def embed_pooled(self, texts: list[str], batch: int = 64) -> torch.Tensor:
        """(len(texts), vec_dim) pooled CLIP-L vectors, used to rank candidate concepts. Batched CLIP-L
        only (ranking hundreds of words must not run T5-XXL hundreds of times)."""
        clip_l = getattr(self.clip.cond_stage_model, "clip_l", None)
        if clip_l is None:  # an unusual text-encoder object: slow but general
            empty = torch.zeros(0, dtype=torch.long)
            return torch.cat([encode_prompt(self.clip, t, empty).pooled for t in texts]).float()
        self.clip.load_model()
        out = []
        for i in range(0, len(texts), batch):
            tokens = [[tok for tok, *_ in self.clip.tokenizer.tokenize_with_weights(t)["l"][0]] for t in texts[i:i + batch]]
            out.append(clip_l.encode(tokens)[1].detach().float().cpu())
        return torch.cat(out)

"""Text-to-image attention maps of Flux's double blocks, read through ComfyUI's attention override.

`InspectAttentionOverride` is a `transformer_options["optimized_attention_override"]`. ComfyUI calls it as
`override(func, q, k, v, heads, **kwargs)` for every attention of the model; Flux passes q, k, v as
(b, h, n, d) after RMS-norm and RoPE (skip_reshape=True), the joint sequence being [txt | img]. The
capture returns `func(q, k, v, heads, **kwargs)` untouched, so sampling with it is bit-identical, and
on the side, for the selected double blocks and sigmas, it records per word:

* mode "attention" (raw, as EraseAnything's Eq. 3 reads attention): softmax(q k^T / sqrt(d)) over
  ALL n keys, kept only at image-query rows x the word's token columns, summed over the word's tokens,
  heads reduced by mean or max: (b, n_img, w). Per image query the columns of all words sum to <= 1.
* mode "output_space" (ConceptAttention, arXiv 2502.04320), simplified to the hooks
  that exist: ConceptAttention pushes extra concept tokens through the text stream of each block and
  scores image pixels by the dot product of the concept tokens' attention *outputs* (softmax-weighted
  values, before the output projection) with the image tokens' attention outputs, then takes a
  softmax over the concepts. Here the concepts are the prompt's own words: a word's vector is the mean
  of the attention outputs o = softmax(q k^T / sqrt(d)) v of its T5 tokens in the real joint attention
  (they attend to the whole prompt and image, not only to concepts + image as in ConceptAttention),
  the score of image token i is <o_img_i, o_word> over all h*d channels (head reduction "mean": the
  full-width dot product, i.e. h x the mean of per-head dot products, exactly ConceptAttention's
  score; "max": h x the largest per-head dot product), and the softmax runs over the selected words
  plus `competitor_idx` (the node passes every other word of the prompt, so one selected word still
  competes with the rest of the prompt). The map keeps the selected words' columns: (b, n_img, w).

Maps are averaged over the captured calls (blocks x sigmas), as DAAM and ConceptAttention average over
layers and steps. In both modes the attention mass is the raw one: the share of the image queries'
attention to text tokens that lands on each word, sum over captured calls, heads and queries of
P(word) / the same sum of P(any text token).

"Text tokens" are all n_txt T5 positions, padding included (ComfyUI pads T5 to 256 and Flux attends to
the padding), so the shares of the prompt's words are small; they sum to <= 1 when no two words share
a token. The output-space vectors are read from the output of ComfyUI's own kernel: nothing is recomputed.

Memory: logits exist for `query_chunk` image queries at a time, (b, h, chunk, n); word sums are
`index_add` over the words' positions (no (w, n_txt) matrix); no (h, n, n) or (h, n_img, n) tensor is
made. Everything kept is detached, float32, on the CPU: (b, n_img, w) maps and (w,) masses.

ComfyUI 0.3.75 puts `block_type` / `block_index` and (in samplers) `sigmas` into transformer_options;
0.3.64 has no block tags, so the capture raises there. n_txt is read from `transformer_options[N_TXT_KEY]`.
"""

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import einsum, rearrange

from .runner import block_index

logger = logging.getLogger(__name__)

N_TXT_KEY = "eraseanything_n_txt"  # transformer_options key: number of text tokens in front of the image
MODES = ("attention", "output_space")
HEAD_REDUCTIONS = ("mean", "max")
SIGMA_TOLERANCE = 1e-3  # a call's sigma matches a selected sigma within this absolute difference

_RANGE = re.compile(r"^(-?\d+)(?:\s*-\s*(-?\d+))?$")
_WORD = re.compile(r"\w+(?:['’-]\w+)*")


# --- Parsing the node's text inputs ---------------------------------------------------------------

def parse_sigmas(text: str) -> tuple[float, ...]:
    """'0.9, 0.7' -> (0.9, 0.7): unique noise levels in [0, 1], in the given order."""
    items = [s.strip() for s in (text or "").split(",") if s.strip()]
    if not items:
        raise ValueError("sigmas is empty: type noise levels between 0 and 1, e.g. '0.9, 0.7, 0.5'.")
    out: list[float] = []
    for item in items:
        try:
            sigma = float(item)
        except ValueError as e:
            raise ValueError(f"sigmas: {item!r} is not a number; type e.g. '0.9, 0.7, 0.5'.") from e
        if not 0.0 <= sigma <= 1.0:
            raise ValueError(f"sigmas: {sigma:g} is outside 0..1 (0 = clean latent, 1 = pure noise).")
        if sigma not in out:
            out.append(sigma)
    return tuple(out)


def parse_blocks(text: str, depth: int) -> tuple[int, ...]:
    """'-1' / '10-18' / '0, 5, -2' -> sorted unique double-block indices in 0..depth-1.
    Negative indices count from the end; 'a-b' is inclusive."""
    items = [s.strip() for s in (text or "").split(",") if s.strip()]
    if not items:
        raise ValueError(f"blocks is empty: type double-block indices, e.g. '-1' or '0-{depth - 1}'.")
    out: set[int] = set()
    for item in items:
        match = _RANGE.match(item)
        if match is None:
            raise ValueError(f"blocks: {item!r} is not an index or a range; type e.g. '-1', '10-18' or '0, 5'.")
        lo, hi = (block_index(int(g), depth, f"blocks: {item!r} names block")
                  for g in (match.group(1), match.group(2) or match.group(1)))
        if lo > hi:
            raise ValueError(f"blocks: the range {item!r} runs backwards; write it low-high.")
        out.update(range(lo, hi + 1))
    return tuple(sorted(out))


def prompt_words(prompt: str) -> tuple[str, ...]:
    """Every word of the prompt once (case-insensitive), in order: letters/digits, with inner ' or -."""
    seen, out = set(), []
    for word in _WORD.findall(prompt or ""):
        if word.lower() not in seen:
            seen.add(word.lower())
            out.append(word)
    return tuple(out)


def split_words(words: str, prompt: str) -> tuple[str, ...]:
    """The node's `words` input: comma-separated words or phrases; empty = every word of the prompt."""
    picked = tuple(dict.fromkeys(" ".join(w.split()) for w in (words or "").split(",") if w.strip()))
    return picked or prompt_words(prompt)


# --- Pure helpers on captured maps ----------------------------------------------------------------

@dataclass(frozen=True)
class Segments:
    """Token positions of several words, flattened: `idx` (K,) positions, `owner` (K,) word number,
    `count` (w,) tokens per word. Sums over a word's columns are `index_add` over `owner`: no (w, n_txt)
    matrix is made."""
    idx: torch.Tensor
    owner: torch.Tensor
    count: torch.Tensor

    @classmethod
    def of(cls, word_idx: Sequence[torch.Tensor], n_txt: int) -> "Segments":
        for j, idx in enumerate(word_idx):
            if len(idx) == 0:
                raise ValueError(f"word {j} has no token positions")
            if int(idx.max()) >= n_txt or int(idx.min()) < 0:
                raise ValueError(f"word {j}: token positions {idx.tolist()} are outside the {n_txt} text tokens")
        return cls(idx=torch.cat([idx.long() for idx in word_idx]),
                   owner=torch.cat([torch.full((len(idx),), j) for j, idx in enumerate(word_idx)]),
                   count=torch.tensor([len(idx) for idx in word_idx]))

    def to(self, device) -> "Segments":
        return Segments(self.idx.to(device), self.owner.to(device), self.count.to(device))

    def sum(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Sum of x over each word's positions along `dim` (x has n_txt there, the result w)."""
        picked = x.index_select(dim, self.idx)  # K along dim
        shape = list(x.shape)
        shape[dim] = len(self.count)
        return x.new_zeros(shape).index_add_(dim, self.owner, picked)


def to_grid(maps: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """(b, n_img, w) token maps -> (b, w, gh, gw) on the image-token grid (row-major, as Flux packs it)."""
    gh, gw = grid_hw
    if maps.shape[1] != gh * gw:
        raise ValueError(f"{maps.shape[1]} image tokens do not fill a {gh}x{gw} token grid")
    return rearrange(maps, "b (gh gw) w -> b w gh gw", gh=gh, gw=gw)


def soft_masks(maps: torch.Tensor, shared_scale: bool = False) -> torch.Tensor:
    """(w, gh, gw) maps -> min-max normalised to [0, 1], per word or on one scale for all words.
    A constant map (nothing to show) becomes all zeros."""
    flat = maps.float().flatten(1)  # (w, gh*gw)
    if shared_scale:
        lo, hi = flat.min(), flat.max()
    else:
        lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    span = hi - lo
    safe_span = torch.where(span > 0, span, torch.ones_like(span))
    out = torch.where(span > 0, (flat - lo) / safe_span, torch.zeros_like(flat))
    return out.reshape(maps.shape).clamp(0, 1)


def upsample(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(w, gh, gw) in [0, 1] -> (w, H, W) bilinear, still in [0, 1]."""
    return F.interpolate(masks[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)


# --- The capture ----------------------------------------------------------------------------------

@dataclass
class CaptureResult:
    """maps: (b, n_img, w) mean over captured calls; mass: (w,) share of text attention per word;
    calls: (block_index, sigma) of every captured call, in order."""
    maps: torch.Tensor
    mass: torch.Tensor
    calls: list[tuple[int, float | None]]


@dataclass
class InspectAttentionOverride:
    """An `optimized_attention_override` that records text-to-image maps per word (module docstring).

    word_idx: one (k_j,) long tensor of T5 positions per word (several tokens: their columns are summed);
    blocks: double-block indices (non-negative); sigmas: noise levels to record (None = every call);
    competitor_idx: extra words for the output-space softmax, not returned; inner: an override that was
    already set on the model, called instead of `func` so the model computes exactly as before.
    """
    word_idx: Sequence[torch.Tensor]
    blocks: Sequence[int]
    sigmas: Sequence[float] | None = None
    head_reduction: str = "mean"
    mode: str = "attention"
    competitor_idx: Sequence[torch.Tensor] = ()
    query_chunk: int = 1024
    inner: object = None
    _map_sum: torch.Tensor | None = field(default=None, repr=False)
    _word_mass: torch.Tensor | None = field(default=None, repr=False)
    _text_mass: torch.Tensor | None = field(default=None, repr=False)
    calls: list = field(default_factory=list)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode: {self.mode!r} is not one of {MODES}")
        if self.head_reduction not in HEAD_REDUCTIONS:
            raise ValueError(f"head_reduction: {self.head_reduction!r} is not one of {HEAD_REDUCTIONS}")
        if not self.word_idx:
            raise ValueError("no words to capture")
        if self.query_chunk < 1:
            raise ValueError(f"query_chunk must be >= 1, got {self.query_chunk}")

    def __call__(self, func, q, k, v, heads, *args, **kwargs):
        if self.inner is not None:
            out = self.inner(func, q, k, v, heads, *args, **kwargs)
        else:
            out = func(q, k, v, heads, *args, **kwargs)
        to = kwargs.get("transformer_options") or {}
        keep, sigma = self._selected(to)
        if keep:
            with torch.no_grad():
                self._record(q, k, out, heads, to, kwargs)
            self.calls.append((int(to["block_index"]), sigma))
        return out

    def _selected(self, to: dict) -> tuple[bool, float | None]:
        """Whether to record this call, and its sigma (None when the caller gave none)."""
        if "block_type" not in to or "block_index" not in to:
            raise RuntimeError("transformer_options has no block_type/block_index: this ComfyUI does not tag "
                               "attention calls with their block (added in 0.3.75). Update ComfyUI.")
        if to["block_type"] != "double" or to["block_index"] not in self.blocks:
            return False, None
        if to.get("cond_or_uncond") and 0 not in to["cond_or_uncond"]:  # an uncond-only batch: another prompt
            return False, None
        sigmas = to.get("sigmas")
        sigma = None if sigmas is None else float(sigmas.flatten()[0])
        if self.sigmas is None:
            return True, sigma
        if sigma is None:
            raise RuntimeError("transformer_options has no 'sigmas'; run the model through a sampler or set it.")
        return any(abs(sigma - s) <= SIGMA_TOLERANCE for s in self.sigmas), sigma

    def _record(self, q, k, out, heads, to, kwargs):
        n_txt = to.get(N_TXT_KEY)
        if n_txt is None:
            raise RuntimeError(f"transformer_options[{N_TXT_KEY!r}] is not set: the capture needs the text length.")
        rows = _cond_rows(to.get("cond_or_uncond"), q.shape[0])
        b, h, n, d = q[rows].shape  # (b, h, n, d)
        if not 0 < n_txt < n:
            raise RuntimeError(f"n_txt = {n_txt} does not fit a joint sequence of {n} tokens")
        dtype = torch.promote_types(q.dtype, torch.float32)
        q_img, k_all = q[rows, :, n_txt:], k[rows].to(dtype)  # (b, h, n_img, d), (b, h, n, d)
        words = Segments.of(self.word_idx, n_txt).to(q.device)
        o_all = _heads_out(out, heads, rows, kwargs) if self.mode == "output_space" else None  # (b, h, n, d)
        concept = self._concept_vectors(o_all, n_txt, dtype) if o_all is not None else None  # (b, h, c, d)
        maps, word_mass, text_mass = [], 0.0, 0.0
        for start in range(0, q_img.shape[2], self.query_chunk):
            stop = min(start + self.query_chunk, q_img.shape[2])
            logits = einsum(q_img[:, :, start:stop].to(dtype), k_all, "b h i d, b h j d -> b h i j") * d ** -0.5
            logits = _apply_mask(logits, kwargs.get("mask"), rows, n_txt + start, n_txt + stop, n)  # (b, h, chunk, n)
            probs_txt = (logits[..., :n_txt] - torch.logsumexp(logits, dim=-1, keepdim=True)).exp()
            del logits
            word_probs = words.sum(probs_txt, dim=-1)  # (b, h, chunk, w)
            word_mass = word_mass + word_probs.sum(dim=(0, 1, 2))
            text_mass = text_mass + probs_txt.sum()
            if concept is None:
                maps.append(word_probs.mean(1) if self.head_reduction == "mean" else word_probs.amax(1))
            else:
                o_img = o_all[:, :, n_txt + start:n_txt + stop].to(dtype)  # (b, h, chunk, d)
                maps.append(self._output_space_probs(o_img, concept, heads))
        self._accumulate(torch.cat(maps, dim=1), word_mass, text_mass)

    def _concept_vectors(self, o_all, n_txt, dtype):
        """(b, h, c, d): mean attention output of each word's tokens; the selected words come first."""
        concepts = Segments.of([*self.word_idx, *self.competitor_idx], n_txt).to(o_all.device)
        sums = concepts.sum(o_all[:, :, :n_txt].to(dtype), dim=2)  # (b, h, c, d)
        return sums / concepts.count.to(dtype)[:, None]

    def _output_space_probs(self, o_img, concept, heads):
        """(b, chunk, w): softmax over all concepts of <o_img, o_concept>, selected words' columns."""
        scores = einsum(o_img, concept, "b h i d, b h c d -> b h i c")
        scores = scores.sum(1) if self.head_reduction == "mean" else scores.amax(1) * heads  # (b, chunk, c)
        return scores.softmax(dim=-1)[..., :len(self.word_idx)]

    def _accumulate(self, maps, word_mass, text_mass):
        maps = maps.detach().float().cpu()  # (b, n_img, w)
        word_mass, text_mass = word_mass.detach().double().cpu(), text_mass.detach().double().cpu()
        if self._map_sum is None:
            self._map_sum, self._word_mass, self._text_mass = maps, word_mass, text_mass
        else:
            if maps.shape != self._map_sum.shape:
                raise RuntimeError(f"attention maps changed shape between calls: {tuple(self._map_sum.shape)} "
                                   f"then {tuple(maps.shape)}; capture one latent size per run.")
            self._map_sum += maps
            self._word_mass += word_mass
            self._text_mass += text_mass

    def result(self) -> CaptureResult:
        if self._map_sum is None:
            raise RuntimeError(f"no attention was captured: blocks {list(self.blocks)} and sigmas "
                               f"{self.sigmas} never ran (are they in the model and the schedule?).")
        mass = (self._word_mass / self._text_mass.clamp_min(1e-30)).float()
        return CaptureResult(maps=self._map_sum / len(self.calls), mass=mass, calls=list(self.calls))


def _heads_out(out, heads, rows, kwargs):
    """The attention output as (b, h, n, d): ComfyUI's kernels return (b, n, h*d) unless skip_output_reshape."""
    if kwargs.get("skip_output_reshape"):
        return out[rows]
    return rearrange(out[rows], "b n (h d) -> b h n d", h=heads)


def _cond_rows(cond_or_uncond, batch: int) -> torch.Tensor | slice:
    """Batch rows of the conditional prompt: a sampler batches [cond, uncond] chunks; only cond
    rows carry the prompt whose token positions we know. All rows when the caller did not say."""
    if not cond_or_uncond:
        return slice(None)
    per = batch // len(cond_or_uncond)
    return torch.tensor([c * per + i for c, kind in enumerate(cond_or_uncond) if kind == 0 for i in range(per)])


def _apply_mask(logits, mask, rows, start, stop, n):
    """Add an attention mask (bool: keep where True; float: additive) to a chunk of query rows."""
    if mask is None:
        return logits
    if mask.ndim >= 2 and mask.shape[-2] == n:
        mask = mask[..., start:stop, :]
    if mask.ndim == 4 and mask.shape[0] > 1:
        mask = mask[rows]
    if mask.dtype == torch.bool:
        return logits.masked_fill(~mask, float("-inf"))
    return logits + mask.to(logits.dtype)

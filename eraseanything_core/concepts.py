"""The words of an erasure run: concept, anchor, synonyms, irrelevant concepts, concept token positions.

The released code took synonyms from NLTK WordNet (downloaded at import), irrelevant concepts from two
GPT-4o calls (API key, no fallback) and T5 positions from a helper that loaded FLUX.1-schnell at
import (docs/method.md). Here all of it is offline and deterministic: synonyms come
from a built-in table (`vocabulary.SYNONYM_GROUPS`), else clearly close vocabulary words by pooled-text
cosine, else surface variants plus a warning; irrelevant concepts (Eq. 5) are vocabulary words at graded
similarity; `concept_token_idx` gives the key columns of Flux's joint attention (text first) read by
Eq. 3 and Eq. 5; `augment_prompt` is the released shuffle and synonym swap, fixed so the concept is
found again after the swap.

The tokenizer is duck-typed: anything with ComfyUI's `tokenize_with_weights(text, return_word_ids=True)`
returning {"t5xxl": [[(token, weight, word_id), ...], ...]} works. No host import here.
"""

import logging
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import EraseConfig
from .vocabulary import SYNONYM_GROUPS, VOCABULARY

logger = logging.getLogger(__name__)

MAX_AUTO_SYNONYMS = 3     # vocabulary words kept as synonyms when ranking finds close ones
SYNONYM_MIN_COSINE = 0.9  # ...each must be at least this close to the concept (pooled text cosine)
SYNONYM_MIN_ZSCORE = 3.0  # ...and stand out of the vocabulary by this many standard deviations
MID_QUANTILE = 0.5        # similarity quantile of the last ("mid") irrelevant concept
PICK_WINDOW = 3           # each irrelevant pick is drawn among this many neighbours of its rank
IRRELEVANT_POOL = 128     # vocabulary words ranked for the irrelevant picks (a seeded sample; bounds encoder calls)
MAX_CONCEPT_TOKENS = 32   # T5 tokens of a concept: a word or a name, not a description (Eq. 3 sums over them)

_FUNCTION_WORDS = frozenset("a an the of by in on at to for from with like featuring as into onto".split())
_CONJUNCTIONS = frozenset("and or but nor &".split())
_PUNCT = ",;:.!?"
_MARK = "\x00"  # where a concept was removed from a prompt


@dataclass(frozen=True)
class ConceptSet:
    """The resolved words of one run. Each of `prompts` draws the concept; `anchors[i]` is the ESD c_0 of
    `prompts[i]` (Eq. 2); `retain` are the prompts the preserve step distils from the frozen model."""
    concept: str
    prompts: tuple[str, ...]
    anchors: tuple[str, ...]
    synonyms: tuple[str, ...]
    irrelevant: tuple[str, ...]
    retain: tuple[str, ...] = ()

    @property
    def prompt(self) -> str:
        return self.prompts[0]

    @property
    def anchor(self) -> str:
        return self.anchors[0]


# --- Text helpers -----------------------------------------------------------------------------

def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    """Stripped, non-empty, first spelling of each case-insensitive duplicate kept, in order."""
    seen, out = set(), []
    for item in items:
        item = " ".join(item.split())
        if item and _norm(item) not in seen:
            seen.add(_norm(item))
            out.append(item)
    return tuple(out)


def _phrase_regex(phrase: str) -> re.Pattern:
    """Case-insensitive whole-word match of `phrase`; any run of whitespace between its words."""
    body = r"\s+".join(re.escape(word) for word in phrase.split())
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def _content_words(phrase: str) -> list[str]:
    words = phrase.split()
    return [w for w in words if w.lower() not in _FUNCTION_WORDS | _CONJUNCTIONS] or words


def _concept_spans(prompt: str, concept: str, substrings: bool = False) -> list[tuple[int, int]]:
    """Character spans of the concept in `prompt`, case-insensitive: whole-phrase matches; else (the
    phrase is not contiguous, e.g. after a free word shuffle) each content word; else, with
    `substrings`, the phrase inside longer words ('nude' in 'nudes')."""
    concept = concept.strip()
    if not concept:
        return []
    spans = [m.span() for m in _phrase_regex(concept).finditer(prompt)]
    if not spans and len(concept.split()) > 1:
        spans = sorted({m.span() for w in _content_words(concept) for m in _phrase_regex(w).finditer(prompt)})
    if not spans and substrings:
        spans = [m.span() for m in re.finditer(re.escape(concept), prompt, re.IGNORECASE)]
    return spans


def _kind(tok: str) -> str:
    low = tok.lower()
    return ("mark" if tok == _MARK else "punct" if tok[0] in _PUNCT else "conj" if low in _CONJUNCTIONS
            else "func" if low in _FUNCTION_WORDS else "word")


def _join(toks: list[str]) -> str:
    """Words joined by spaces, punctuation glued to the word before; no leading, doubled or
    dangling (',', ';', ':') punctuation."""
    out: list[str] = []
    for tok in toks:
        if _kind(tok) != "punct":
            out.append(tok)
        elif out and _kind(out[-1]) == "punct":
            out[-1] = tok if tok[0] in ".!?" else out[-1]  # ", ." -> "."; ", ," -> ","
        elif out:
            out.append(tok)
    while out and _kind(out[-1]) == "punct" and out[-1][0] in ",;:":
        out.pop()
    text = " ".join(out)
    return re.sub(rf"\s+([{re.escape(_PUNCT)}])", r"\1", text)


def _anchor_tokens(prompt: str, spans: list[tuple[int, int]]) -> list[str]:
    """Words, punctuation runs and _MARK for each removed span; '(concept:1.2)' becomes one _MARK."""
    text = prompt
    for start, end in reversed(spans):
        text = f"{text[:start]} {_MARK} {text[end:]}"
    text = re.sub(rf"\(\s*{_MARK}\s*(?::\s*-?[\d.]+\s*)?\)", f" {_MARK} ", text)
    text = re.sub(rf"-*\s*{_MARK}\s*-*", f" {_MARK} ", text)  # "sexy-[x]" -> "sexy"
    toks: list[str] = []
    for chunk in text.split():
        lead, core, trail = re.fullmatch(rf"([{re.escape(_PUNCT)}]*)(.*?)([{re.escape(_PUNCT)}]*)", chunk).groups()
        toks += [t for t in (lead, core, trail) if t]
    return toks


def default_anchor(prompt: str, concept: str) -> str:
    """The prompt with the concept removed: the ESD anchor c_0 when the user gives none.

    Case-insensitive whole words: the phrase, else each of its content words, else every word that
    contains the phrase ("nudes"). Articles and prepositions left dangling before the gap ("a photo
    of [nude]," -> "a photo,") and conjunctions left without a partner ("[nude] and smiling" ->
    "smiling") are dropped, as are doubled or dangling commas. "a nude girl with beautiful hair" -
    "nude" -> "a girl with beautiful hair"; "Van Gogh" - "Van Gogh" -> "". "" when nothing is left.
    """
    concept = " ".join(concept.split())
    spans = _concept_spans(prompt, concept)
    if not spans and concept:
        spans = [m.span() for m in re.finditer(rf"\w*{re.escape(concept)}\w*", prompt, re.IGNORECASE)]
    toks = _anchor_tokens(prompt, spans)
    out: list[str] = []
    skip_conj = False
    for i, tok in enumerate(toks):
        if tok != _MARK:
            if not (skip_conj and _kind(tok) == "conj"):
                out.append(tok)
            skip_conj = False
            continue
        nxt = next((_kind(t) for t in toks[i + 1:] if t != _MARK), "end")
        if nxt == "conj":
            skip_conj = not out or _kind(out[-1]) != "word"  # "by [x] and Monet" -> "by Monet"
            continue
        while out and _kind(out[-1]) == "func" and nxt != "word":
            out.pop()  # "a photo of [x]," -> "a photo,"
        if out and _kind(out[-1]) == "conj" and nxt != "word":
            out.pop()  # "cats and [x]." -> "cats."
    if all(_kind(t) in ("func", "conj", "punct") for t in out):
        return ""
    return _join(out)


def replace_concept(prompt: str, concept: str, word: str) -> str:
    """The prompt with the concept replaced by `word` (an anchor or an irrelevant concept), case-insensitive
    whole words: every occurrence of the phrase ("a red circle", "blue" -> "a blue circle"); else, when the
    phrase is not contiguous, its first content word (the others removed); else every word that contains
    the phrase. The prompt unchanged when the concept is not in it."""
    concept, word = " ".join(concept.split()), " ".join(word.split())
    spans = [m.span() for m in _phrase_regex(concept).finditer(prompt)]
    if not spans:
        spans = _concept_spans(prompt, concept)
        words = [word] + [""] * (len(spans) - 1)
    else:
        words = [word] * len(spans)
    if not spans:
        spans = [m.span() for m in re.finditer(rf"\w*{re.escape(concept)}\w*", prompt, re.IGNORECASE)]
        words = [word] * len(spans)
    for (start, end), w in reversed(list(zip(spans, words))):
        prompt = f"{prompt[:start]}{w}{prompt[end:]}"
    return " ".join(prompt.split())


def mentions(prompt: str, phrase: str) -> bool:
    """Whether the phrase occurs in the prompt as whole words (case-insensitive)."""
    return bool(phrase.strip()) and _phrase_regex(" ".join(phrase.split())).search(prompt) is not None


def line_anchors(prompts: Sequence[str], concept: str, anchors: Sequence[str], anchor_word: str) -> tuple[str, ...]:
    """One ESD anchor per prompt line: the anchor prompts as given (one for all lines, or one per line);
    else each line with the concept replaced by `anchor_word`; else each line with the concept removed
    (`default_anchor`)."""
    if anchors:
        return tuple(anchors) * len(prompts) if len(anchors) == 1 else tuple(anchors)
    if anchor_word.strip():
        return tuple(replace_concept(p, concept, anchor_word) for p in prompts)
    return tuple(default_anchor(p, concept) for p in prompts)


def retain_prompts(concept: str, synonyms: Sequence[str], prompts: Sequence[str], anchors: Sequence[str],
                   irrelevant: Sequence[str], keep: Sequence[str]) -> tuple[str, ...]:
    """The retain set: what the erasure must leave as the frozen model draws it. Every concept prompt with
    the concept replaced by each irrelevant concept ("a red circle" -> "a green circle"), the anchor
    prompts (each line with the concept replaced by the anchor), and the user's keep prompts; each once,
    in that order. A built prompt that still names the concept or a synonym is left out (a warning says
    which); a keep prompt that does raises ValueError."""
    erased = (concept, *synonyms)
    bad_keep = [k for k in keep if any(mentions(k, w) for w in erased)]
    if bad_keep:
        raise ValueError(f"keep: {bad_keep} names the concept {concept!r} or one of its synonyms {list(synonyms)}; "
                         "a prompt to keep unchanged cannot contain what is erased. Remove the word from it, or "
                         "remove the prompt.")
    built = [replace_concept(p, concept, w) for p in prompts for w in irrelevant] + [a for a in anchors if a]
    dropped = [b for b in built if any(mentions(b, w) for w in erased)]
    if dropped:
        logger.warning("retain set: left out %s, which still name %r or a synonym.", dropped, concept)
    return _unique([b for b in built if b not in dropped] + list(keep))


def surface_variants(concept: str) -> tuple[str, ...]:
    """Spelling variants of the concept (other case, plural or singular): the fallback synonyms when
    neither the table nor the vocabulary has real ones. Never empty."""
    c = " ".join(concept.split())
    variants = [c.lower() if c != c.lower() else c.title()]
    if c == c.lower() and c[-1:].isalpha():
        head, last = c.rsplit(" ", 1) if " " in c else ("", c)
        if last.endswith("s") and len(last) > 3:
            plural = last[:-1]
        elif last.endswith("y") and last[-2:-1] not in tuple("aeiou"):
            plural = last[:-1] + "ies"
        elif last.endswith(("ch", "sh", "x", "z")):
            plural = last + "es"
        else:
            plural = last + "s"
        variants.append(f"{head} {plural}".strip())
    return tuple(v for v in _unique(variants) if v != c) or (c,)


def table_synonyms(concept: str) -> tuple[str, ...]:
    """Synonyms from the built-in table, matched case-insensitively; () when none match.

    A concept that is a member of a group gets the other members. A concept that contains a
    member as whole words ("nude girl" contains "nude") gets that member swapped for the others
    ("naked girl", ...); the longest contained member wins.
    """
    key = _norm(concept)
    exact = [m for g in SYNONYM_GROUPS if key in map(_norm, g) for m in g]
    if exact:
        return tuple(m for m in _unique(exact) if _norm(m) != key)
    best = None  # (member, match)
    for member in (m for g in SYNONYM_GROUPS for m in g):
        match = _phrase_regex(member).search(concept)
        if match and (best is None or len(member) > len(best[0])):
            best = (member, match)
    if best is None:
        return ()
    member, match = best
    others = [m for g in SYNONYM_GROUPS if _norm(member) in map(_norm, g) for m in g]
    swapped = (f"{concept[:match.start()]}{m}{concept[match.end():]}".strip() for m in others)
    return tuple(s for s in _unique(swapped) if _norm(s) != key)


# --- Ranking by pooled text embeddings --------------------------------------------------------

class _Similarity:
    """Cosine similarity of pooled text embeddings; each string is embedded once."""

    def __init__(self, embed_pooled: Callable[[list[str]], torch.Tensor]):
        self._embed = embed_pooled
        self._rows: dict[str, torch.Tensor] = {}

    def __call__(self, query: str, candidates: Sequence[str]) -> torch.Tensor:
        """(n,) float32 cosines of `candidates` to `query`."""
        missing = list(dict.fromkeys(t for t in (query, *candidates) if t not in self._rows))
        if missing:
            emb = self._embed(missing)
            if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != len(missing):
                raise ValueError(f"embed_pooled must return a (len(texts), dim) tensor for {len(missing)} "
                                 f"texts, got {tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb)}.")
            emb = F.normalize(emb.detach().to("cpu", torch.float32), dim=-1)  # (len, dim)
            self._rows.update(zip(missing, emb))
        cand = torch.stack([self._rows[t] for t in candidates])  # (n, dim)
        return cand @ self._rows[query]  # (n,)


def _auto_synonyms(concept: str, similarity: _Similarity) -> tuple[str, ...]:
    """Table synonyms; else up to MAX_AUTO_SYNONYMS vocabulary phrases that are clearly close
    (cosine >= SYNONYM_MIN_COSINE and z-score >= SYNONYM_MIN_ZSCORE over the candidates); else
    surface variants, with a warning. Related-but-different words ("dog" for "golden retriever")
    would be erased too, so ranking is deliberately strict."""
    found = table_synonyms(concept)
    if found:
        return found
    candidates = [c for c in _unique((*VOCABULARY, *(m for g in SYNONYM_GROUPS for m in g)))
                  if _norm(c) != _norm(concept)]
    sims = similarity(concept, candidates)  # (n,)
    z = (sims - sims.mean()) / sims.std().clamp_min(1e-6)
    order = sorted(range(len(candidates)), key=lambda i: (-sims[i].item(), i))
    picked = tuple(candidates[i] for i in order[:MAX_AUTO_SYNONYMS]
                   if sims[i] >= SYNONYM_MIN_COSINE and z[i] >= SYNONYM_MIN_ZSCORE)
    if picked:
        return picked
    variants = surface_variants(concept)
    logger.warning("No synonyms found for %r (the built-in table has none, and no vocabulary word is clearly "
                   "close), so only its spelling variants %s are erased with it. To erase other words for it "
                   "too, type them into the synonyms input, one per line or comma-separated, e.g. "
                   "'crimson, scarlet' for 'red'.", concept, list(variants))
    return variants


def _stem(word: str) -> str:
    word = word.lower().strip(_PUNCT + "'\"()")
    return word[:-1] if word.endswith("s") and len(word) > 3 else word


def _pick_irrelevant(concept: str, synonyms: Sequence[str], k: int, similarity: _Similarity,
                     seed: int) -> tuple[str, ...]:
    """K irrelevant concepts for Eq. 5 at graded distance from the concept.

    The released code asked GPT-4o for words per category {No_relation, far, mid, close} and kept
    [No_relation[r], far[r], mid[r]] for one random r in {0, 1, 2}: never a close word. Here the
    vocabulary, minus every entry sharing a content word with the concept or a synonym, is sampled
    down to IRRELEVANT_POOL words and sorted from least to most similar (pooled text cosine). Pick i
    of K sits at similarity quantile MID_QUANTILE * i / (K - 1): for K = 3 the least similar word,
    the 25 % quantile ("far") and the median ("mid"). Like `tidy_output`, one r in range(PICK_WINDOW)
    chooses among the PICK_WINDOW words around every target rank. The sample and r come from
    Random(seed): same seed, same words.
    """
    banned = {_stem(w) for phrase in (concept, *synonyms) for w in _content_words(phrase)}
    candidates = [c for c in VOCABULARY if not banned & {_stem(w) for w in c.split()}]
    if len(candidates) < k:
        raise RuntimeError(f"only {len(candidates)} vocabulary words are left for {k} irrelevant concepts.")
    rng = random.Random(seed)
    keep = set(rng.sample(range(len(candidates)), min(len(candidates), IRRELEVANT_POOL)))
    candidates = [c for i, c in enumerate(candidates) if i in keep]
    sims = similarity(concept, candidates)  # (n,)
    n = len(candidates)
    ranked = [candidates[i] for i in sorted(range(n), key=lambda i: (sims[i].item(), i))]
    r = rng.randrange(PICK_WINDOW)
    picks: list[str] = []
    for i in range(k):
        centre = round(MID_QUANTILE * i / (k - 1) * (n - 1)) if k > 1 else 0
        rank = min(max(centre - PICK_WINDOW // 2, 0) + r, n - 1)
        while ranked[rank] in picks:
            rank = (rank + 1) % n
        picks.append(ranked[rank])
    return tuple(picks)


def resolve_concepts(cfg: EraseConfig, embed_pooled: Callable[[list[str]], torch.Tensor]) -> ConceptSet:
    """Fill in what the user left automatic: anchors, synonyms, irrelevant concepts, and the retain set.

    Args:
        cfg: the run's config. `cfg.anchor` / `cfg.anchor_word`, `cfg.synonyms` and `cfg.irrelevant` win
            when given (synonyms equal to the concept are dropped).
        embed_pooled: texts -> (len(texts), dim) pooled text embeddings (in the pack: the loaded
            model's CLIP-L pooled output). Called at most twice, only when ranking is needed.
    Raises:
        ValueError: the concept is not in a prompt line, an irrelevant concept is the concept or one of
            its synonyms, or a keep prompt names the concept.
    """
    concept, prompts = " ".join(cfg.concept.split()), cfg.concept_prompts
    for n, prompt in enumerate(prompts, 1):
        if not _concept_spans(prompt, concept, substrings=True):
            where = f"line {n} " if len(prompts) > 1 else ""
            raise ValueError(f"prompt: the concept {concept!r} does not appear in {where}{prompt!r}. Write it into "
                             "every prompt line, or leave the prompt empty to use built-in prompts around the concept.")
    anchors = line_anchors(prompts, concept, cfg.anchor_prompts, cfg.anchor_word)
    similarity = _Similarity(embed_pooled)
    synonyms = tuple(s for s in _unique(cfg.synonyms) if _norm(s) != _norm(concept))
    synonyms = synonyms or _auto_synonyms(concept, similarity)
    irrelevant = _unique(cfg.irrelevant)
    clash = [w for w in irrelevant if _norm(w) in {_norm(concept), *map(_norm, synonyms)}]
    if clash:
        raise ValueError(f"irrelevant: {clash} is the concept or one of its synonyms; remove it, or "
                         "leave irrelevant empty to choose automatically.")
    irrelevant = irrelevant or _pick_irrelevant(concept, synonyms, cfg.num_irrelevant, similarity, cfg.seed)
    keep = _unique(cfg.keep)
    retain = retain_prompts(concept, synonyms, prompts, anchors, irrelevant, keep) if cfg.lambda_retain > 0 else ()
    if cfg.lambda_retain <= 0 and keep:
        logger.warning("keep prompts %s are not used: lambda_retain is 0.", list(keep))
    logger.debug("concepts: anchors=%r synonyms=%s irrelevant=%s retain=%s", anchors, synonyms, irrelevant, retain)
    return ConceptSet(concept=concept, prompts=prompts, anchors=anchors, synonyms=synonyms, irrelevant=irrelevant,
                      retain=retain)


# --- Concept token positions (Eq. 3 and Eq. 5 read these key columns) -------------------------

def _t5_tokens(tokenizer, text: str) -> list[tuple[int, object]]:
    """(position, token id) of the real T5 tokens of `text`. EOS and padding carry word id 0 in
    ComfyUI's tokenizers and are dropped; batches are concatenated, as the encoder output is."""
    out, offset = [], 0
    for batch in tokenizer.tokenize_with_weights(text, return_word_ids=True)["t5xxl"]:
        for i, (tok, _weight, word_id) in enumerate(batch):
            if word_id != 0:
                out.append((offset + i, tok if isinstance(tok, int) else object()))  # embeddings never match
        offset += len(batch)
    return out


def _ids(tokenizer, text: str) -> list[object]:
    return [tok for _, tok in _t5_tokens(tokenizer, text)] if text.strip() else []


def _nearest_match(hay: list[object], needle: list[object], expected: int, used: set[int]) -> int | None:
    """Start of the occurrence of `needle` in `hay` closest to `expected`, preferring unused starts."""
    starts = [i for i in range(len(hay) - len(needle) + 1) if hay[i:i + len(needle)] == needle]
    if not starts:
        return None
    return min(starts, key=lambda i: (i in used, abs(i - expected), i))


def _common_prefix(a: list[object], b: list[object]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _locate(tokenizer, prompt: str, hay: list[object], span: tuple[int, int], used: set[int]):
    """Token range (start, stop) in `hay` of the prompt substring at `span`, or None.

    First the substring tokenized alone. When the tokenizer splits it differently in context
    ('sexy-nude', 'nudes'), the whitespace-delimited chunk around it is found instead and narrowed
    to the tokens that differ from those of the chunk's text before and after the substring.
    """
    s, e = span
    sub = _ids(tokenizer, prompt[s:e])
    if not sub:
        return None
    start = _nearest_match(hay, sub, len(_ids(tokenizer, prompt[:s])), used)
    if start is not None:
        used.add(start)
        return start, start + len(sub)
    cs = s - len(re.search(r"\S*$", prompt[:s]).group())
    ce = e + len(re.match(r"\S*", prompt[e:]).group())
    chunk = _ids(tokenizer, prompt[cs:ce])
    start = _nearest_match(hay, chunk, len(_ids(tokenizer, prompt[:cs])), used)
    if start is None or not chunk:
        return None
    lo = _common_prefix(_ids(tokenizer, prompt[cs:s]), chunk)
    upto = _ids(tokenizer, prompt[cs:e])
    hi = _common_prefix(upto, chunk) + (_common_prefix(upto, chunk) < len(upto))
    return start + lo, start + min(max(hi, lo + 1), len(chunk))


def concept_token_idx(tokenizer, prompt: str, concept: str) -> torch.LongTensor:
    """Positions of the concept's tokens in the prompt's T5 sequence: the concept's key columns in
    Flux's joint attention, where text comes first.

    Every case-insensitive occurrence of the phrase counts (or of each of its content words when the
    phrase is not contiguous; or of the phrase inside a longer word). Each occurrence is tokenized
    alone with the same tokenizer and found in the prompt's tokens near where it should be, so
    repeated sub-tokens elsewhere in the prompt are not selected (unlike the released
    `get_word_index`). EOS and padding are never selected.

    Args:
        tokenizer: ComfyUI's FluxTokenizer, or anything with the same `tokenize_with_weights`.
    Returns:
        (k,) int64, sorted and unique.
    Raises:
        ValueError: the concept is empty, longer than MAX_CONCEPT_TOKENS, not in the prompt, or has no T5
            tokens there.
    """
    concept = " ".join((concept or "").split())
    if not concept:
        raise ValueError("concept is empty: type the word or phrase to erase, e.g. 'Van Gogh'.")
    n_tokens = len(_ids(tokenizer, concept))
    if n_tokens > MAX_CONCEPT_TOKENS:
        raise ValueError(f"concept is {n_tokens} T5 tokens long; a concept can be at most {MAX_CONCEPT_TOKENS} "
                         "(a word, a name or a short phrase such as 'Van Gogh'). Put a longer description into "
                         "the prompt and type only what to erase as the concept.")
    spans = _concept_spans(prompt, concept, substrings=True)
    if not spans:
        raise ValueError(f"prompt: the concept {concept!r} does not appear in {prompt!r}. Write it into "
                         "the prompt, or leave the prompt empty to use the concept alone.")
    tokens = _t5_tokens(tokenizer, prompt)
    hay = [tok for _, tok in tokens]
    positions: set[int] = set()
    used: set[int] = set()
    has_tokens = False
    for span in spans:
        has_tokens |= bool(_ids(tokenizer, prompt[span[0]:span[1]]))
        found = _locate(tokenizer, prompt, hay, span, used)
        if found:
            positions.update(tokens[j][0] for j in range(*found))
    if not has_tokens:
        raise ValueError(f"concept {concept!r} gives no T5 tokens (only weighting syntax or spaces?); "
                         "use a concept made of words, e.g. 'nude'.")
    if not positions:
        raise ValueError(f"could not find the T5 tokens of {concept!r} in {prompt!r}; remove prompt "
                         "syntax such as '(word:1.2)' or 'embedding:' around the concept.")
    return torch.tensor(sorted(positions), dtype=torch.long)  # (k,)


# --- Prompt augmentation (released `LoraDataset.__getitem__`, §2.3) ---------------------------

def _shuffle_units(prompt: str, concept: str) -> list[str]:
    """Whitespace-separated words of the prompt, with each occurrence of the concept phrase (and any
    punctuation glued to it) kept as one unit."""
    spans = _concept_spans(prompt, concept)
    units: list[str] = []
    last_span = None
    for m in re.finditer(r"\S+", prompt):
        span = next((sp for sp in spans if m.start() < sp[1] and sp[0] < m.end()), None)
        if span is not None and span == last_span:
            units[-1] = f"{units[-1]} {m.group()}"
        else:
            units.append(m.group())
        last_span = span
    return units


def augment_prompt(prompt: str, concept: str, synonyms: Sequence[str], rng: random.Random,
                   shuffle_p: float = 0.9, swap_p: float = 0.5) -> tuple[str, str]:
    """The released augmentation: with `shuffle_p` shuffle the words, then with `swap_p` replace the
    concept by one synonym drawn uniformly (all occurrences, case-insensitive, whole words).

    Returns (augmented prompt, the concept as it now appears there: the synonym after a swap, else
    the concept's spelling in the prompt). Pass both to `concept_token_idx`.

    Deviations from the released code, both so that the concept's tokens can be found:
      * token positions are computed after the swap by the caller (the released code kept the
        pre-swap positions, stale for multi-token synonyms: docs/method.md);
      * a multi-word concept ("Van Gogh") moves as one unit in the shuffle, so it stays contiguous
        (the released `str.split` shuffle broke it apart, and then the swap silently did nothing).
    The same rng state gives the same prompt; pass one `random.Random(cfg.seed)` per run.
    """
    units = _shuffle_units(prompt, concept)
    if rng.random() < shuffle_p:
        rng.shuffle(units)
    text = " ".join(units)
    do_swap = rng.random() < swap_p
    synonym = rng.choice(list(synonyms)) if synonyms else None
    match = _phrase_regex(concept).search(text) if concept.strip() else None
    if match is None:
        return text, " ".join(concept.split())
    if do_swap and synonym:
        return _phrase_regex(concept).sub(lambda _: synonym, text), synonym
    return text, match.group()


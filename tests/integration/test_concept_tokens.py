"""Concept token positions with ComfyUI's real Flux tokenizer (T5 + CLIP-L), and resolve_concepts
with pooled embeddings from a real (tiny) ComfyUI CLIP."""

import random

import pytest
import torch

from eraseanything_core.concepts import augment_prompt, concept_token_idx, resolve_concepts, table_synonyms
from eraseanything_core.config import EraseConfig
from eraseanything_core.vocabulary import VOCABULARY


@pytest.fixture(scope="module")
def tokenizer(tiny_clip):
    return tiny_clip.tokenizer


def t5_items(tokenizer, text):
    return tokenizer.tokenize_with_weights(text, return_word_ids=True)["t5xxl"][0]


def t5_ids(tokenizer, text):
    """The real T5 token ids of `text` alone: EOS (1) and padding (0) dropped."""
    return [tok for tok, _w, _word in t5_items(tokenizer, text) if tok not in (0, 1)]


def selected_ids(tokenizer, prompt, idx):
    items = t5_items(tokenizer, prompt)
    return [items[i][0] for i in idx.tolist()]


def test_nude_positions_hold_the_tokens_of_the_word(tokenizer):
    idx = concept_token_idx(tokenizer, "a nude girl with beautiful hair", "nude")
    assert idx.dtype == torch.long and idx.ndim == 1
    assert idx.tolist() == [2, 3]  # '▁', 'a', '▁nu', 'de', ...
    assert selected_ids(tokenizer, "a nude girl with beautiful hair", idx) == t5_ids(tokenizer, "nude")


@pytest.mark.parametrize("prompt, concept, surface", [
    ("a painting in the style of Van Gogh, starry night", "van gogh", "Van Gogh"),     # 4 tokens
    ("a photo of a garbage truck on the street", "garbage truck", "garbage truck"),
    ("a bunch of chrysanthemums in a vase", "chrysanthemums", "chrysanthemums"),
    ("Nude girl on a beach", "nude", "Nude"),                                        # at the start
    ("a NUDE girl", "nude", "NUDE"),                                                 # uppercase
    ("a girl, nude, smiling", "nude", "nude"),                                        # punctuation
    ("portrait (nude) at dusk!", "nude", "nude"),                                     # weighting syntax
    ("a (nude:1.3) girl", "nude", "nude"),
    ("a girl who is nude.", "nude", "nude"),
])
def test_positions_hold_exactly_the_concept_tokens(tokenizer, prompt, concept, surface):
    idx = concept_token_idx(tokenizer, prompt, concept)
    want = t5_ids(tokenizer, surface)
    assert len(want) >= 1 and len(idx) == len(want)
    assert selected_ids(tokenizer, prompt, idx) == want
    assert idx.tolist() == list(range(idx[0], idx[0] + len(want)))  # contiguous


def test_every_occurrence_is_selected_once(tokenizer):
    prompt = "nude girl, Nude woman and a nude statue"
    idx = concept_token_idx(tokenizer, prompt, "nude")
    got = selected_ids(tokenizer, prompt, idx)
    assert got == t5_ids(tokenizer, "nude") + t5_ids(tokenizer, "Nude") + t5_ids(tokenizer, "nude")


def test_shared_sub_tokens_elsewhere_are_not_selected(tokenizer):
    # 'de' of 'nude' also ends other words; only the concept's own positions count.
    prompt = "a nude girl in a dress"
    idx = concept_token_idx(tokenizer, prompt, "nude")
    assert len(idx) == len(t5_ids(tokenizer, "nude"))


def test_concept_glued_to_other_characters_selects_its_own_tokens(tokenizer):
    for prompt in ("a sexy-nude girl", "two nudes"):
        idx = concept_token_idx(tokenizer, prompt, "nude")
        assert 1 <= len(idx) <= 3
        items = t5_items(tokenizer, prompt)
        pieces = tokenizer.t5xxl.tokenizer.convert_ids_to_tokens([items[i][0] for i in idx.tolist()])
        assert "".join(pieces).lstrip("▁").startswith("nu"), pieces


def test_scattered_multi_word_concept_selects_each_word(tokenizer):
    prompt = "Gogh painting by Van"
    idx = concept_token_idx(tokenizer, prompt, "Van Gogh")
    assert sorted(selected_ids(tokenizer, prompt, idx)) == sorted(t5_ids(tokenizer, "Gogh") + t5_ids(tokenizer, "Van"))


def test_eos_and_padding_are_never_selected(tokenizer):
    for prompt, concept in [("nude", "nude"), ("a girl, nude", "nude"), ("Van Gogh", "Van Gogh")]:
        idx = concept_token_idx(tokenizer, prompt, concept)
        items = t5_items(tokenizer, prompt)
        assert len(items) == 256
        assert all(items[i][0] not in (0, 1) and items[i][2] != 0 for i in idx.tolist())


def test_positions_follow_the_prompt_after_augmentation(tokenizer):
    prompt = "a painting in the style of Van Gogh with a nude girl and starry night"
    synonyms = table_synonyms("Van Gogh")
    rng = random.Random(0)
    for _ in range(40):
        text, surface = augment_prompt(prompt, "Van Gogh", synonyms, rng)
        idx = concept_token_idx(tokenizer, text, surface)
        got = selected_ids(tokenizer, text, idx)
        assert got[:len(t5_ids(tokenizer, surface))] == t5_ids(tokenizer, surface), (text, surface)


def test_absent_concept_is_a_value_error_that_says_what_to_do(tokenizer):
    with pytest.raises(ValueError, match="does not appear.*Write it into the prompt"):
        concept_token_idx(tokenizer, "a cat on a sofa", "nude")


@pytest.mark.parametrize("concept", ["", "   "])
def test_empty_concept_is_a_value_error(tokenizer, concept):
    with pytest.raises(ValueError, match="concept is empty"):
        concept_token_idx(tokenizer, "a nude girl", concept)


def test_concept_without_tokens_is_a_value_error(tokenizer):
    with pytest.raises(ValueError, match="no T5 tokens"):
        concept_token_idx(tokenizer, "a () girl", "()")


def test_resolve_concepts_end_to_end_with_tiny_clip_pooled_output(tiny_clip):
    tiny_clip.load_model()
    clip_l = tiny_clip.cond_stage_model.clip_l

    def embed_pooled(texts):  # CLIP-L pooled output of the loaded model, one batched forward: (len, 16)
        tokens = [[tok for tok, _weight in tiny_clip.tokenizer.tokenize_with_weights(t)["l"][0]] for t in texts]
        with torch.no_grad():
            return clip_l.encode(tokens)[1]

    reference = tiny_clip.encode_from_tokens(tiny_clip.tokenize("nude"), return_pooled=True)[1]  # (1, 16)
    torch.testing.assert_close(embed_pooled(["nude", "car"])[:1], reference)

    cfg = EraseConfig(concept="nude", prompt="a nude girl with beautiful hair", seed=0)
    result = resolve_concepts(cfg, embed_pooled)
    assert result.anchor == "a girl with beautiful hair"
    assert "naked" in result.synonyms
    assert len(result.irrelevant) == 3 and set(result.irrelevant) <= set(VOCABULARY)
    assert resolve_concepts(cfg, embed_pooled) == result

    unknown = resolve_concepts(EraseConfig(concept="golden retriever", seed=0), embed_pooled)
    assert unknown.synonyms and len(unknown.irrelevant) == 3
    assert not {"golden", "retriever"} & {w for i in unknown.irrelevant for w in i.split()}
    idx = concept_token_idx(tiny_clip.tokenizer, unknown.prompt, unknown.concept)
    assert len(idx) == len(t5_ids(tiny_clip.tokenizer, "golden retriever"))

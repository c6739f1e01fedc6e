"""Concept words without ComfyUI: anchors, synonyms, irrelevant concepts, prompt augmentation."""

import logging
import random
import zlib

import pytest
import torch

from eraseanything_core import concepts
from eraseanything_core.concepts import (ConceptSet, augment_prompt, default_anchor, mentions, replace_concept,
                                         resolve_concepts, retain_prompts, surface_variants, table_synonyms)
from eraseanything_core.config import EraseConfig
from eraseanything_core.vocabulary import SYNONYM_GROUPS, VOCABULARY

DIM = 256


def char_trigram_embed(texts: list[str]) -> torch.Tensor:
    """A fake pooled text encoder: hashed bag of character trigrams, (len(texts), DIM)."""
    out = torch.zeros(len(texts), DIM)
    for row, text in enumerate(texts):
        padded = f"  {text.lower()} "
        for i in range(len(padded) - 2):
            out[row, zlib.crc32(padded[i:i + 3].encode()) % DIM] += 1.0
    return out


class CountingEmbed:
    def __init__(self, fn=char_trigram_embed, overrides=None):
        self.fn, self.overrides, self.calls, self.texts = fn, overrides or {}, 0, []

    def __call__(self, texts):
        self.calls += 1
        self.texts += texts
        emb = self.fn(texts)
        for i, t in enumerate(texts):
            if t in self.overrides:
                emb[i] = self.fn([self.overrides[t]])[0] + 1e-3 * torch.arange(DIM) / DIM
        return emb


def refuse_embed(texts):
    raise AssertionError(f"embed_pooled should not be called, got {texts[:3]}")


def cosine_to(concept, words):
    emb = torch.nn.functional.normalize(char_trigram_embed([concept, *words]), dim=-1)
    return (emb[1:] @ emb[0]).tolist()


# --- anchors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, concept, anchor", [
    ("a nude girl with beautiful hair", "nude", "a girl with beautiful hair"),
    ("A NUDE girl", "nude", "A girl"),
    ("Van Gogh", "Van Gogh", ""),
    ("a painting in the style of Van Gogh, starry night", "van gogh", "a painting in the style, starry night"),
    ("a photo of nude, smiling", "nude", "a photo, smiling"),
    ("nude and smiling girl", "nude", "smiling girl"),
    ("portrait, by Van Gogh, oil", "Van Gogh", "portrait, oil"),
    ("a (nude:1.2) girl", "nude", "a girl"),
    ("a 1.5 m tall nude statue.", "nude", "a 1.5 m tall statue."),
    ("nude, nude, nude", "nude", ""),
    ("a dog in the garden", "dog", "in the garden"),
    ("nudes on a beach", "nude", "on a beach"),  # a word containing the concept goes too
])
def test_default_anchor_removes_concept_words(prompt, concept, anchor):
    assert default_anchor(prompt, concept) == anchor


def test_anchor_of_scattered_multi_word_concept_removes_each_word():
    assert default_anchor("Gogh painting by Van", "Van Gogh") == "painting"


# --- synonyms --------------------------------------------------------------------------------

def test_table_synonyms_match_case_insensitively_and_exclude_the_concept():
    assert {"naked", "undressed", "topless"} <= set(table_synonyms("NUDE"))
    assert "nude" in table_synonyms("Naked") and "Naked" not in table_synonyms("Naked")
    assert "automobile" in table_synonyms("car") and "puppy" in table_synonyms("dog")
    assert {"Vincent van Gogh", "style of Van Gogh"} <= set(table_synonyms("van gogh"))
    assert {"disc", "ring"} <= set(table_synonyms("circle"))


def test_table_synonyms_swap_a_member_inside_a_longer_concept():
    assert "naked girl" in table_synonyms("nude girl")
    assert "a photo of a trash truck" in table_synonyms("a photo of a garbage truck")


def test_table_has_no_unknown_concept_and_groups_are_real_groups():
    assert table_synonyms("golden retriever") == ()
    assert all(len(g) >= 2 and all(m.strip() == m and m for m in g) for g in SYNONYM_GROUPS)


def test_vocabulary_is_large_unique_and_clean():
    assert len(VOCABULARY) >= 300
    assert len({v.lower() for v in VOCABULARY}) == len(VOCABULARY)
    assert all(v and v == " ".join(v.split()) and "," not in v for v in VOCABULARY)


@pytest.mark.parametrize("concept", ["nude", "Van Gogh", "garbage truck", "box", "party", "x"])
def test_surface_variants_differ_from_the_concept_and_are_never_empty(concept):
    variants = surface_variants(concept)
    assert variants and concept not in variants
    assert surface_variants("party") == ("Party", "parties")


def test_unknown_concept_without_close_words_falls_back_to_variants_with_a_warning(caplog):
    cfg = EraseConfig(concept="zorblax")
    with caplog.at_level(logging.WARNING, logger="eraseanything_core.concepts"):
        result = resolve_concepts(cfg, char_trigram_embed)
    assert result.synonyms == surface_variants("zorblax")
    assert any("No synonyms found" in r.getMessage() and "comma-separated" in r.getMessage()
               and r.levelno == logging.WARNING for r in caplog.records)


def test_ranking_takes_clearly_close_vocabulary_words_as_synonyms(caplog):
    embed = CountingEmbed(overrides={"mutt": "wolf"})  # "mutt" embeds (almost) like "wolf"
    with caplog.at_level(logging.WARNING, logger="eraseanything_core.concepts"):
        result = resolve_concepts(EraseConfig(concept="mutt"), embed)
    assert result.synonyms[0] == "wolf"
    assert not caplog.records


def test_table_concept_needs_no_ranking_for_synonyms():
    embed = CountingEmbed()
    result = resolve_concepts(EraseConfig(concept="nude"), embed)
    assert "naked" in result.synonyms
    assert embed.calls == 1 and "naked" not in embed.texts  # only the irrelevant ranking


# --- user overrides and prompt checks ---------------------------------------------------------

def test_user_lists_win_and_nothing_is_embedded():
    cfg = EraseConfig(concept="nude", prompt="a nude girl", anchor="a girl, clothed", synonyms=("naked", " nude "),
                      irrelevant=("car", "tree"))
    result = resolve_concepts(cfg, refuse_embed)
    assert result == ConceptSet(concept="nude", prompts=("a nude girl",), anchors=("a girl, clothed",),
                                synonyms=("naked",), irrelevant=("car", "tree"),
                                retain=("a car girl", "a tree girl", "a girl, clothed"))


def test_empty_prompt_uses_templates_around_the_concept_and_anchor_defaults_to_the_prompt_minus_concept():
    result = resolve_concepts(EraseConfig(concept="Van Gogh", synonyms=("Vincent",), irrelevant=("x",)), refuse_embed)
    assert result.prompts == ("Van Gogh", "a photo of Van Gogh", "a painting of Van Gogh", "a close-up picture of Van Gogh")
    assert result.anchors == ("", "a photo", "a painting", "a close-up picture")
    result = resolve_concepts(EraseConfig(concept="nude", prompt="a nude girl with beautiful hair",
                                          synonyms=("naked",), irrelevant=("x",)), refuse_embed)
    assert result.anchor == "a girl with beautiful hair"


def test_concept_missing_from_prompt_is_a_value_error():
    with pytest.raises(ValueError, match="does not appear"):
        resolve_concepts(EraseConfig(concept="nude", prompt="a cat on a sofa"), char_trigram_embed)


def test_irrelevant_equal_to_a_synonym_is_a_value_error():
    with pytest.raises(ValueError, match="irrelevant"):
        resolve_concepts(EraseConfig(concept="nude", synonyms=("naked",), irrelevant=("Naked", "car")), refuse_embed)


# --- irrelevant concepts ------------------------------------------------------------------------

@pytest.mark.parametrize("concept", ["nude", "Van Gogh", "garbage truck", "cat", "zorblax", "sunflower"])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_k_graded_irrelevant_concepts_never_include_the_concept_or_its_synonyms(concept, k):
    result = resolve_concepts(EraseConfig(concept=concept, num_irrelevant=k, seed=1), char_trigram_embed)
    assert len(result.irrelevant) == k == len(set(result.irrelevant))
    banned = {w.lower().rstrip("s") for p in (concept, *result.synonyms) for w in p.split() if len(w) > 2}
    for word in result.irrelevant:
        assert word in VOCABULARY
        assert not banned & {w.lower().rstrip("s") for w in word.split()}, (word, banned)
    sims = cosine_to(concept, result.irrelevant)
    assert sims == sorted(sims) or k == 1  # unrelated -> far -> mid


def test_irrelevant_concepts_are_unrelated_far_and_mid_never_close():
    for seed in range(5):
        result = resolve_concepts(EraseConfig(concept="sunflower", seed=seed), char_trigram_embed)
        sims = sorted(cosine_to("sunflower", [w for w in VOCABULARY if "sunflower" not in w]))
        unrelated, far, mid = cosine_to("sunflower", result.irrelevant)
        assert unrelated <= sims[len(sims) // 10]
        assert sims[len(sims) // 20] <= far <= sims[len(sims) // 2]
        assert sims[len(sims) // 4] <= mid <= sims[len(sims) * 3 // 4]


def test_ranking_embeds_a_bounded_number_of_texts():
    embed = CountingEmbed()
    resolve_concepts(EraseConfig(concept="nude"), embed)
    assert len(embed.texts) == concepts.IRRELEVANT_POOL + 1


def test_same_seed_gives_the_same_concepts_and_seeds_vary_the_picks():
    runs = [resolve_concepts(EraseConfig(concept="Van Gogh", seed=s), char_trigram_embed) for s in (0, 0, 1, 2, 3)]
    assert runs[0] == runs[1]
    assert len({r.irrelevant for r in runs}) >= 2


# --- augmentation ---------------------------------------------------------------------------------

PROMPT = "a nude girl with beautiful hair"


def test_augmentation_probabilities_match_the_released_ones():
    rng, n = random.Random(0), 4000
    swaps = shuffles = 0
    for _ in range(n):
        text, surface = augment_prompt(PROMPT, "nude", ("naked", "undressed"), rng, shuffle_p=0.9, swap_p=0.5)
        swaps += surface != "nude"
        assert surface in text.split() and sorted(text.replace(surface, "nude").split()) == sorted(PROMPT.split())
        shuffles += text.replace(surface, "nude") != PROMPT
    assert abs(swaps / n - 0.5) < 0.03
    assert abs(shuffles / n - 0.9 * (1 - 1 / 720)) < 0.02  # an identity shuffle reads as "not shuffled"


def test_probability_zero_leaves_the_prompt_alone():
    rng = random.Random(0)
    for _ in range(50):
        assert augment_prompt(PROMPT, "NUDE", ("naked",), rng, shuffle_p=0.0, swap_p=0.0) == (PROMPT, "nude")


def test_multi_word_concept_stays_contiguous_through_the_shuffle():
    prompt = "a painting in the style of Van Gogh, starry night over a quiet village"
    rng = random.Random(0)
    for _ in range(300):
        text, surface = augment_prompt(prompt, "Van Gogh", (), rng, shuffle_p=1.0, swap_p=1.0)
        assert surface == "Van Gogh" and "Van Gogh" in text


def test_swap_returns_the_synonym_as_it_appears_in_the_prompt():
    rng = random.Random(3)
    seen = set()
    for _ in range(200):
        text, surface = augment_prompt("Van Gogh, Van Gogh again", "van gogh", ("style of Picasso", "Monet"),
                                       rng, shuffle_p=0.0, swap_p=1.0)
        assert text == f"{surface}, {surface} again"
        seen.add(surface)
    assert seen == {"style of Picasso", "Monet"}


def test_same_seed_gives_the_same_augmented_prompts():
    def run(seed):
        rng = random.Random(seed)
        return [augment_prompt(PROMPT, "nude", ("naked", "topless"), rng) for _ in range(20)]
    assert run(5) == run(5) and run(5) != run(6)


# --- several prompt lines, per-line anchors, the retain set -------------------------------------

def test_every_prompt_line_gets_its_own_anchor_in_each_form():
    lines = "a red circle\nthe square is red\n\nRed cross"
    by_word = resolve_concepts(EraseConfig(concept="red", prompt=lines, anchor_word="blue", irrelevant=("green",),
                                           synonyms=("crimson",)),
                               refuse_embed)
    assert by_word.prompts == ("a red circle", "the square is red", "Red cross")
    assert by_word.anchors == ("a blue circle", "the square is blue", "blue cross")
    one = resolve_concepts(EraseConfig(concept="red", prompt=lines, anchor="a blue shape", irrelevant=("green",),
                                       synonyms=("crimson",)),
                           refuse_embed)
    assert one.anchors == ("a blue shape",) * 3
    each = resolve_concepts(EraseConfig(concept="red", prompt=lines, anchor="a\nb\nc", irrelevant=("green",),
                                        synonyms=("crimson",)),
                            refuse_embed)
    assert each.anchors == ("a", "b", "c")
    removed = resolve_concepts(EraseConfig(concept="red", prompt=lines, irrelevant=("green",), synonyms=("crimson",)),
                               refuse_embed)
    assert removed.anchors == ("a circle", "the square is", "cross")
    assert len(by_word.anchors) == len(by_word.prompts) == len(removed.anchors)


def test_anchor_lines_must_match_the_prompt_lines_and_not_come_with_an_anchor_word():
    with pytest.raises(ValueError, match="2 lines for 3 prompt lines"):
        EraseConfig(concept="red", prompt="a red a\na red b\na red c", anchor="x\ny")
    with pytest.raises(ValueError, match="not both"):
        EraseConfig(concept="red", prompt="a red a", anchor="x", anchor_word="blue")


def test_a_prompt_line_without_the_concept_is_named():
    with pytest.raises(ValueError, match="line 2"):
        resolve_concepts(EraseConfig(concept="red", prompt="a red circle\na blue square", irrelevant=("g",)),
                         refuse_embed)


def test_retain_set_replaces_the_concept_by_each_irrelevant_concept_and_adds_anchors_and_keep():
    cfg = EraseConfig(concept="red", prompt="a red circle\na red square", anchor_word="blue",
                      irrelevant=("green", "blue", "yellow"), synonyms=("crimson",), keep=("a portrait of a woman",))
    retain = resolve_concepts(cfg, refuse_embed).retain
    assert retain == ("a green circle", "a blue circle", "a yellow circle", "a green square", "a blue square",
                      "a yellow square", "a portrait of a woman")  # the anchors are the 'blue' lines: once each
    assert not any(mentions(r, w) for r in retain for w in ("red", "crimson"))


def test_built_retain_prompts_that_still_name_the_concept_are_left_out():
    retain = retain_prompts("red", ("crimson",), ["a red circle"], ["a red-free circle"], ["crimson red", "green"], [])
    assert retain == ("a green circle",)


def test_a_keep_prompt_naming_the_concept_or_a_synonym_is_refused():
    for keep in ("a Red car", "a crimson rose"):
        with pytest.raises(ValueError, match="keep: .* cannot contain what is erased"):
            resolve_concepts(EraseConfig(concept="red", prompt="a red circle", irrelevant=("green",),
                                         synonyms=("crimson",), keep=(keep,)), refuse_embed)


def test_no_retain_set_without_its_weight():
    cfg = EraseConfig(concept="red", prompt="a red circle", irrelevant=("green",), synonyms=("crimson",),
                      lambda_retain=0.0)
    assert resolve_concepts(cfg, refuse_embed).retain == ()


def test_replace_concept_forms():
    assert replace_concept("a Red circle, red", "red", "blue") == "a blue circle, blue"
    assert replace_concept("Gogh painted by Van", "Van Gogh", "Monet") == "Monet painted by"
    assert replace_concept("two nudes", "nude", "people") == "two people"

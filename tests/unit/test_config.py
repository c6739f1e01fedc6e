"""EraseConfig is the one home of defaults, ranges and help: every field documents itself, and every
declared range is enforced, with a message that names the field and the limit."""

import math
import re
from dataclasses import fields

import pytest

from eraseanything_core.config import EraseConfig, help_of


def test_every_field_has_help_text():
    missing = [f.name for f in fields(EraseConfig) if not f.metadata.get("help")]
    assert not missing


@pytest.mark.parametrize("changes, message", [
    (dict(learning_rate=0.0), "learning_rate must be above 0.0, got 0.0"),
    (dict(learning_rate=math.nan), "learning_rate must be a finite number, got nan"),
    (dict(eta=math.inf), "eta must be a finite number, got inf"),
    (dict(lambda_attn=-1.0), "lambda_attn must be at least 0.0, got -1.0"),
    (dict(steps=0), "steps must be at least 1, got 0"),
    (dict(rank=500), "rank must be at most 128, got 500"),
    (dict(shuffle_p=1.5), "shuffle_p must be at most 1.0, got 1.5"),
    (dict(tau=0.0), "tau must be above 0.0, got 0.0"),
    (dict(attn_blocks=(-1, math.nan)), "attn_blocks must be a finite number"),
    (dict(reference="ema"), "reference: 'ema' is not one of ('frozen', 'lora')"),
    (dict(targets=("txt_qk", "nope")), "targets: 'nope' is not one of"),
    (dict(concept="🔥🔥"), "concept '🔥🔥' has no letters or digits"),
    (dict(concept="  "), "concept is empty"),
])
def test_out_of_range_values_are_refused_naming_the_field_and_limit(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        EraseConfig(**{"concept": "cat", **changes})


def test_every_declared_limit_is_enforced():
    """For each field with a min / max / gt, a value just outside it is refused."""
    for f in fields(EraseConfig):
        meta, default = f.metadata, help_of(f.name)["default"]
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            continue
        for key, outside in (("min", -1), ("max", +1), ("gt", 0)):
            if key not in meta:
                continue
            value = meta[key] + outside * (1 if isinstance(default, int) else 1e-3) if key != "gt" else meta[key]
            with pytest.raises(ValueError, match=f.name):
                EraseConfig(concept="cat", **{f.name: type(default)(value)})


def test_defaults_are_valid_and_a_concept_with_digits_is_fine():
    assert EraseConfig(concept="R2D2").steps == 300
    assert help_of("concept")["default"] == "" and help_of("rank") == {**help_of("rank"), "default": 8, "min": 1}


def test_paper_preset_sets_the_released_weights_and_a_changed_field_wins():
    paper = EraseConfig(concept="cat", preset="paper")
    assert (paper.steps, paper.learning_rate, paper.num_images) == (200, 1e-3, 8)
    assert (paper.lambda_rsc, paper.rsc_feature, paper.lambda_fm, paper.lambda_retain) == (0.1, "head0", 0.1, 0.0)
    assert EraseConfig(concept="cat", preset="paper", lambda_rsc=0.3, steps=50).lambda_rsc == 0.3
    assert EraseConfig(concept="cat", preset="paper", steps=50).steps == 50
    default = EraseConfig(concept="cat")
    assert (default.lambda_retain, default.lambda_rsc, default.lambda_fm) == (3.0, 0.0, 0.0)
    assert paper.to_metadata()["preset"] == "paper"
    with pytest.raises(ValueError, match="preset"):
        EraseConfig(concept="cat", preset="released")


def test_prompt_lines_and_default_templates():
    assert EraseConfig(concept="red", prompt="a red circle\n\n  a red   square ").concept_prompts == (
        "a red circle", "a red square")
    assert EraseConfig(concept="red").concept_prompts[:2] == ("red", "a photo of red")

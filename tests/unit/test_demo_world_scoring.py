"""The demo world's scoring: prompt groups ask for what they say, scores and IoU match plain formulas."""

import numpy as np
import pytest
import torch

from eraseanything_core.attention_maps import soft_masks, upsample
from eraseanything_core.demo_world import scoring, shapes


def test_shape_groups_name_the_target_its_synonyms_and_the_other_shapes():
    groups = {g.name: g for g in scoring.prompt_groups("circle", "a square", min_samples=100)}
    assert set(groups) == {"target", "synonym", "other", "anchor"}
    for g in groups.values():
        assert len(g.texts) >= 100 and len(g.texts) == len(g.shape_idx) == len(g.colour_idx)
    circle = shapes.SHAPES.index("circle")
    assert all(" circle" in t or t.startswith("circle") for t in groups["target"].texts)
    assert (groups["target"].shape_idx == circle).all() and (groups["synonym"].shape_idx == circle).all()
    assert all(any(w in t.split() for w in ("disc", "dot")) and "circle" not in t for t in groups["synonym"].texts)
    assert not any("circle" in t or "disc" in t or "dot" in t.split() for t in groups["other"].texts)
    assert set(groups["other"].shape_idx.tolist()) == {1, 2, 3}
    for g in (groups["target"], groups["other"]):  # each prompt names its own colour, every colour equally often
        for text, c in zip(g.texts, g.colour_idx.tolist()):
            assert shapes.COLOUR_NAMES[c] in text.split()
        assert len(set(np.bincount(g.colour_idx.numpy()).tolist())) == 1
    assert set(groups["anchor"].texts) == {"a square"} and (groups["anchor"].shape_idx == -1).all()


def test_colour_groups_have_no_synonyms_and_keep_every_shape():
    groups = {g.name: g for g in scoring.prompt_groups("red", "a blue shape", min_samples=100)}
    assert set(groups) == {"target", "other", "anchor"}
    assert (groups["target"].colour_idx == 0).all() and set(groups["target"].shape_idx.tolist()) == {0, 1, 2, 3}
    assert 0 not in groups["other"].colour_idx.tolist() and not any("red" in t for t in groups["other"].texts)


def test_unknown_target_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="circle"):
        scoring.prompt_groups("hexagon", "a shape")


class _FixedJudge:
    def __init__(self, shape_idx, colour_idx):
        self.out = (torch.as_tensor(shape_idx), torch.as_tensor(colour_idx))

    def predict(self, images):
        return self.out


def test_score_against_a_plain_loop():
    gen = torch.Generator().manual_seed(0)
    n = 40
    group = scoring.PromptGroup("target", ["x"] * n, torch.randint(0, 4, (n,), generator=gen),
                                torch.randint(0, 4, (n,), generator=gen))
    shape_pred, colour_pred = torch.randint(0, 4, (n,), generator=gen), torch.randint(0, 4, (n,), generator=gen)
    s = scoring.score(_FixedJudge(shape_pred, colour_pred), None, group, "circle")
    rows = list(zip(shape_pred.tolist(), colour_pred.tolist(), group.shape_idx.tolist(), group.colour_idx.tolist()))
    assert s.target_rate == pytest.approx(sum(sp == 0 for sp, _, _, _ in rows) / n)
    assert s.same_kind_rate == pytest.approx(sum(sp == si for sp, _, si, _ in rows) / n)
    assert s.prompted_rate == pytest.approx(sum(sp == si and cp == ci for sp, cp, si, ci in rows) / n)
    assert s.other_kept == pytest.approx(sum(cp == ci for _, cp, _, ci in rows) / n)
    s = scoring.score(_FixedJudge(shape_pred, colour_pred), None, group, "green")
    assert s.target_rate == pytest.approx(sum(cp == 1 for _, cp, _, _ in rows) / n)
    assert s.same_kind_rate == pytest.approx(sum(cp == ci for _, cp, _, ci in rows) / n)
    assert s.other_kept == pytest.approx(sum(sp == si for sp, _, si, _ in rows) / n)


def test_iou_against_sets():
    soft = torch.tensor([[0.9, 0.6, 0.1], [0.5, 0.49, 0.0]])
    truth = torch.tensor([[True, False, False], [True, True, False]])
    pred = {(0, 0), (0, 1), (1, 0)}
    true = {(0, 0), (1, 0), (1, 1)}
    assert scoring.iou(soft, truth) == pytest.approx(len(pred & true) / len(pred | true))
    assert scoring.iou(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bool)) == 1.0


def test_attention_probes_show_the_target_with_matching_captions():
    texts, batch = scoring.attention_probes("red", 12, seed=0)
    assert (batch.colour_idx == 0).all() and all(t.startswith("a red ") for t in texts)
    assert all(shapes.SHAPES[s] in t for s, t in zip(batch.shape_idx.tolist(), texts))
    assert batch.masks.shape == (12, 32, 32) and batch.masks.flatten(1).any(1).all()


def test_fixed_map_scores_position_alone_between_a_blank_map_and_each_pictures_own_mask():
    """The reference a word's map must beat: one centred map for every picture. It overlaps the objects (they
    sit near the centre) but less than each picture's own mask brought to the token grid, and more than a map
    that marks the whole picture."""
    probes, seed = 16, 3
    fixed = scoring.fixed_map_miou("triangle", probes, seed)
    _, batch = scoring.attention_probes("triangle", probes, seed)
    own = torch.nn.functional.avg_pool2d(batch.masks.float()[:, None], scoring.TOKEN_PX)[:, 0]  # (n, 8, 8)
    own_miou = sum(scoring.iou(upsample(soft_masks(own[i:i + 1]), (32, 32))[0], batch.masks[i])
                   for i in range(probes)) / probes
    whole_picture = sum(scoring.iou(torch.ones(32, 32), m) for m in batch.masks) / probes
    assert whole_picture < fixed < own_miou, (whole_picture, fixed, own_miou)
    assert own_miou > 0.8 and fixed > 0.4


def test_token_regions_split_the_grid_by_where_each_token_lies():
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:20, 8:18] = True  # tokens (2..4, 2..3) inside; rows 2-4 and column 4 partly covered
    regions = scoring.token_regions(mask)
    assert set(regions) == {"inside", "edge", "next", "far"}
    assert sum(r.long() for r in regions.values()).eq(1).all(), "every token in exactly one region"
    assert regions["inside"].nonzero().tolist() == [[2, 2], [2, 3], [3, 2], [3, 3], [4, 2], [4, 3]]
    assert regions["edge"].nonzero().tolist() == [[2, 4], [3, 4], [4, 4]]
    assert regions["next"].sum() == 5 * 5 - 9 and regions["far"].sum() == 64 - 25

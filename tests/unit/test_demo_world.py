"""The demo world's plain-torch parts: the picture generator, its captions, the pixel VAE, the judge."""

import numpy as np
import pytest
import torch

from eraseanything_core.demo_world import judge as judge_lib
from eraseanything_core.demo_world import shapes, training
from eraseanything_core.demo_world.vae import (FLUX_SCALE, FLUX_SHIFT, PixelUnshuffleVAE, model_space_to_pixels,
                                               pixels_to_model_space)


def test_same_seed_gives_identical_pictures_masks_and_captions():
    a_rng, b_rng = np.random.default_rng(7), np.random.default_rng(7)
    a, b = shapes.sample(32, a_rng), shapes.sample(32, b_rng)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert shapes.captions(a, a_rng, 0.3) == shapes.captions(b, b_rng, 0.3)
    c = shapes.sample(32, np.random.default_rng(8))
    assert not torch.equal(a.images, c.images)


def test_coloured_backgrounds_differ_from_the_object_and_leave_the_plain_stream_alone():
    plain = shapes.sample(64, np.random.default_rng(4))
    assert torch.equal(plain.background_idx, torch.full((64,), -1)), "p_background 0: every picture on grey"
    data = shapes.sample(400, np.random.default_rng(4), p_background=0.5)
    coloured = data.background_idx >= 0
    assert 0.4 < coloured.float().mean() < 0.6
    assert not (data.background_idx == data.colour_idx).any(), "the object stays visible"
    for image, mask, b in zip(data.images[coloured], data.masks[coloured], data.background_idx[coloured]):
        colour = torch.tensor(shapes.COLOURS[shapes.COLOUR_NAMES[b]])[:, None]
        assert torch.allclose(image[:, ~mask], colour.expand(-1, int((~mask).sum())))


def test_masks_cover_exactly_the_coloured_pixels():
    data = shapes.sample(200, np.random.default_rng(0))
    background = torch.tensor(shapes.BACKGROUND)[:, None]
    for image, mask, c, k in zip(data.images, data.masks, data.colour_idx, data.shape_idx):
        colour = torch.tensor(shapes.COLOURS[shapes.COLOUR_NAMES[c]])[:, None] * shapes.SHADES[k]  # every shape its own shade
        assert 20 < mask.sum() < 32 * 32 // 2, "a shape is visible and leaves background around it"
        assert torch.allclose(image[:, mask], colour.expand(-1, int(mask.sum())))
        assert torch.allclose(image[:, ~mask], background.expand(-1, int((~mask).sum())))
        assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()


def test_every_shape_and_colour_appears_and_shapes_differ():
    data = shapes.sample(400, np.random.default_rng(1))
    assert set(data.shape_idx.tolist()) == set(range(4)) and set(data.colour_idx.tolist()) == set(range(4))
    masks = [shapes.shape_mask(s, 16, 16, 10) for s in shapes.SHAPES]
    for i in range(4):
        for j in range(i + 1, 4):
            assert (masks[i] != masks[j]).sum() > 20, (shapes.SHAPES[i], shapes.SHAPES[j])


def test_no_shape_leaves_a_band_under_it_that_the_others_fill():
    """Every shape reaches at least the circle's and the square's bottom row: v4's triangle ended 0.2 r above
    them, and its word's map peaked on that band of background instead of on the object (docs/demo_world.md,
    "v5")."""
    bottoms = {s: np.nonzero(shapes.shape_mask(s, 16, 16, 10).any(axis=1))[0].max() for s in shapes.SHAPES}
    assert min(bottoms.values()) == bottoms["circle"] == bottoms["square"], bottoms


def strip_filler(text: str) -> str:
    for form in shapes.FILLER_FORMS:
        head, tail = form.split("{t}")
        for w in shapes.FILLERS:
            h, t = head.format(w=w), tail.format(w=w)
            if text.startswith(h) and text.endswith(t) and len(text) > len(h) + len(t):
                return text[len(h):len(text) - len(t)]
    return text


def test_captions_use_the_synonyms_and_stay_in_the_closed_set():
    rng = np.random.default_rng(2)
    data = shapes.sample(2000, rng, p_background=0.25)
    texts = shapes.captions(data, rng, p_partial=0.2, p_filler=0.3)
    closed = set(shapes.all_captions())
    with_filler = [t for t in texts if t not in closed]
    assert 0.15 < len(with_filler) / len(texts) < 0.3, "fillers go on full captions only (80% of them here)"
    assert {strip_filler(t) for t in with_filler} <= closed, "a filler caption is a closed-set caption plus one word"
    for text, b in zip(texts, data.background_idx.tolist()):
        if b >= 0:
            assert shapes.COLOUR_NAMES[b] in strip_filler(text).split(), "a coloured background is always named"
    words = " ".join(texts).split()
    for shape in shapes.SHAPES:
        for word in shapes.shape_words(shape):
            assert word in words, word
    full = shapes.captions(data, np.random.default_rng(3), p_partial=0.0)
    for text, s, c in zip(full, data.shape_idx.tolist(), data.colour_idx.tolist()):
        assert shapes.COLOUR_NAMES[c] in text.split()
        assert any(w in text.split() for w in shapes.shape_words(shapes.SHAPES[s])), text


def test_a_caption_without_a_colour_gets_a_white_object_and_every_other_picture_is_untouched():
    rng = np.random.default_rng(5)
    data = shapes.sample(400, rng)
    texts = shapes.captions(data, rng, p_partial=0.5, p_filler=0.5)
    unnamed = torch.tensor([not shapes.names_colour(t) for t in texts])
    assert 0.2 < unnamed.float().mean() < 0.4, "partial captions without a colour: 0.6 of half"
    white = shapes.whiten(data, unnamed)
    assert torch.equal(white.masks, data.masks) and torch.equal(white.shape_idx, data.shape_idx)
    assert torch.equal(white.images[~unnamed], data.images[~unnamed])
    assert (white.colour_idx == shapes.UNNAMED).tolist() == unnamed.tolist()
    for image, mask, k in zip(white.images[unnamed], white.masks[unnamed], white.shape_idx[unnamed]):
        white_at_shade = torch.tensor(shapes.UNNAMED_COLOUR)[:, None] * shapes.SHADES[k]
        assert torch.allclose(image[:, mask], white_at_shade.expand(-1, int(mask.sum())))
        assert torch.allclose(image[:, ~mask], torch.tensor(shapes.BACKGROUND)[:, None].expand(-1, int((~mask).sum())))
    # a colour is named wherever it stands, punctuation or not; words that merely contain one are not colours
    assert shapes.names_colour("the circle is red, wow") and shapes.names_colour("yellow")
    assert not shapes.names_colour("a circle") and not shapes.names_colour("") and not shapes.names_colour("reddish blob")


def test_pixel_vae_round_trips_and_model_space_is_the_pixels():
    pixels = torch.rand(3, 3, 32, 32) * 2 - 1
    x = pixels_to_model_space(pixels)
    assert x.shape == (3, 16, 16, 16) and torch.equal(x[:, 12:], torch.zeros(3, 4, 16, 16))
    assert torch.equal(x[0, :3, 0, 0], pixels[0, :, 0, 0].new_tensor([pixels[0, 0, 0, 0], pixels[0, 0, 0, 1], pixels[0, 0, 1, 0]]))
    assert torch.equal(model_space_to_pixels(x), pixels)
    vae = PixelUnshuffleVAE()
    z = vae.encode(pixels)
    assert torch.allclose((z - FLUX_SHIFT) * FLUX_SCALE, x, atol=1e-6), "ComfyUI's Flux latent format maps z back to the pixels"
    assert torch.allclose(vae.decode(z), pixels, atol=1e-6)


def test_the_judge_sees_every_shade_in_every_shape_and_white():
    """The judge's pictures break the world's tie between shape and shade, so it cannot read one from the other."""
    data = judge_lib.generator_batch(2000, np.random.default_rng(0))
    brightness = torch.stack([image[:, mask].amax(0).mean() for image, mask in zip(data.images, data.masks)])
    white = data.colour_idx == shapes.UNNAMED
    assert 0.15 < white.float().mean() < 0.25
    for k in range(len(shapes.SHAPES)):
        levels = {round(v / 0.9, 2) for v in brightness[white & (data.shape_idx == k)].tolist()}
        assert levels == set(shapes.SHADES), (shapes.SHAPES[k], levels)


def test_judge_outputs_one_prediction_per_image():
    torch.manual_seed(0)
    judge = judge_lib.Judge().eval()
    shape_idx, colour_idx = judge.predict(torch.rand(5, 3, 32, 32))
    assert shape_idx.shape == colour_idx.shape == (5,)
    assert shape_idx.max() < 4 and colour_idx.max() <= shapes.UNNAMED, "four named colours and white"


def _sdpa(q, k, v, heads, mask=None, skip_reshape=True, transformer_options=None):
    """ComfyUI's attention_pytorch for skip_reshape inputs, output left as (b, h, n, d): SDPA with the mask
    broadcast as it broadcasts it ((n, n) -> (1, 1, n, n), (b, n, n) -> (b, 1, n, n))."""
    if mask is not None and mask.ndim == 2:
        mask = mask[None]
    if mask is not None and mask.ndim == 3:
        mask = mask[:, None]
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def test_word_key_mask_hides_the_word_from_every_other_query_in_its_blocks_only():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 12, 4, generator=g, dtype=torch.float64) for _ in range(3))
    word = torch.tensor([3, 4])
    masked = training.WordKeyMask(word, {("double", 1)})
    out = masked(_sdpa, q, k, v, 3, skip_reshape=True, transformer_options={"block_type": "double", "block_index": 1})

    keep = torch.ones(12, 12, dtype=torch.bool)  # plain reference: the word's columns gone except in its own rows
    keep[:, word] = False
    keep[3:5, 3:5] = True
    logits = (q @ k.transpose(-1, -2) / 2).masked_fill(~keep, float("-inf"))
    torch.testing.assert_close(out, logits.softmax(-1) @ v)
    others = torch.ones(12, dtype=torch.bool)
    others[word] = False
    v_word_changed = v.clone()
    v_word_changed[:, :, word] += 5
    out_changed = masked(_sdpa, q, k, v_word_changed, 3, skip_reshape=True,
                         transformer_options={"block_type": "double", "block_index": 1})
    torch.testing.assert_close(out_changed[:, :, others], out[:, :, others])  # nothing of the word reaches them
    assert not torch.allclose(out_changed[:, :, word], out[:, :, word])

    for block in (("double", 0), ("single", 1)):  # other blocks run exactly as without the override
        to = {"block_type": block[0], "block_index": block[1]}
        assert torch.equal(masked(_sdpa, q, k, v, 3, skip_reshape=True, transformer_options=to), _sdpa(q, k, v, 3))
    assert masked.calls == 2
    with pytest.raises(RuntimeError, match="without a mask"):
        masked(_sdpa, q, k, v, 3, skip_reshape=True, mask=torch.zeros(12, 12, dtype=torch.float64),
               transformer_options={"block_type": "double", "block_index": 1})


def test_word_key_mask_hides_the_word_from_each_pictures_own_queries():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 12, 4, generator=g, dtype=torch.float64) for _ in range(3))
    word = torch.tensor([3])
    hidden = torch.zeros(2, 12, dtype=torch.bool)
    hidden[0, 6:9] = True  # picture 0 hides the word from queries 6-8, picture 1 from query 10 and from itself,
    hidden[1, [3, 10]] = True  # which the word's own position ignores
    masked = training.WordKeyMask(word, {("double", 0)}, hidden)
    out = masked(_sdpa, q, k, v, 3, skip_reshape=True, transformer_options={"block_type": "double", "block_index": 0})

    keep = torch.ones(2, 1, 12, 12, dtype=torch.bool)  # plain reference, per picture
    keep[0, 0, 6:9, 3] = False
    keep[1, 0, 10, 3] = False
    logits = (q @ k.transpose(-1, -2) / 2).masked_fill(~keep, float("-inf"))
    torch.testing.assert_close(out, logits.softmax(-1) @ v)
    untouched = ~hidden
    untouched[1, 3] = True
    plain = _sdpa(q, k, v, 3)
    for b in range(2):
        torch.testing.assert_close(out[b][:, untouched[b]], plain[b][:, untouched[b]])
        assert not torch.allclose(out[b][:, ~untouched[b]], plain[b][:, ~untouched[b]])
    with pytest.raises(ValueError, match="covers 11 positions, the attention has 12"):
        training.WordKeyMask(word, {("double", 0)}, hidden[:, :11])(
            _sdpa, q, k, v, 3, skip_reshape=True, transformer_options={"block_type": "double", "block_index": 0})

"""InspectAttentionOverride and the map helpers, in plain torch against full-softmax references."""

import pytest
import torch
from einops import rearrange

from eraseanything_core.attention_maps import (N_TXT_KEY, InspectAttentionOverride, parse_blocks, parse_sigmas,
                                               prompt_words, soft_masks, split_words, to_grid, upsample)

B, H, N_TXT, N_IMG, D = 1, 3, 10, 24, 8
WORDS = [torch.tensor([2, 3]), torch.tensor([5]), torch.tensor([7, 8])]


def qkv(seed, b=B, h=H, n=N_TXT + N_IMG, d=D, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=g, dtype=dtype) * 2 for _ in range(3))


def full_probs(q, k, mask=None):
    logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (b, h, n, n)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return logits.softmax(-1)


def kernel(q, k, v, heads, mask=None, skip_reshape=True, skip_output_reshape=False, **kwargs):
    """Stand-in for ComfyUI's attention: (b, h, n, d) in, (b, n, h*d) out unless skip_output_reshape."""
    out = full_probs(q, k, mask) @ v
    return out if skip_output_reshape else rearrange(out, "b h n d -> b n (h d)")


def options(block=0, sigma=0.5, block_type="double", **extra):
    return {"block_type": block_type, "block_index": block, "sigmas": torch.tensor([sigma]), N_TXT_KEY: N_TXT, **extra}


def call(capture, q, k, v, **to_changes):
    kwargs = {k_: to_changes.pop(k_) for k_ in ("mask", "skip_output_reshape") if k_ in to_changes}
    return capture(kernel, q, k, v, q.shape[1], skip_reshape=True, transformer_options=options(**to_changes), **kwargs)


def raw_reference(q, k, word_idx=WORDS, reduce="mean", mask=None):
    probs = full_probs(q, k, mask)[:, :, N_TXT:]  # (b, h, n_img, n)
    per_word = torch.stack([probs[..., idx].sum(-1) for idx in word_idx], dim=-1)  # (b, h, n_img, w)
    maps = per_word.mean(1) if reduce == "mean" else per_word.amax(1)
    mass = per_word.sum(dim=(0, 1, 2)) / probs[..., :N_TXT].sum()
    return maps, mass, per_word, probs


@pytest.mark.parametrize("reduce", ["mean", "max"])
@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_chunked_maps_equal_the_full_softmax_columns(chunk, reduce):
    q, k, v = qkv(0)
    capture = InspectAttentionOverride(WORDS, blocks=[0], head_reduction=reduce, query_chunk=chunk)
    call(capture, q, k, v)
    want, _, _, _ = raw_reference(q, k, reduce=reduce)
    assert torch.allclose(capture.result().maps.double(), want, atol=1e-6)


def test_mean_and_max_reduce_heads_differently_and_max_bounds_mean():
    q, k, v = qkv(1)
    results = {}
    for reduce in ("mean", "max"):
        capture = InspectAttentionOverride(WORDS, blocks=[0], head_reduction=reduce)
        call(capture, q, k, v)
        results[reduce] = capture.result().maps
    assert (results["max"] >= results["mean"] - 1e-7).all() and not torch.allclose(results["max"], results["mean"])


def test_word_columns_sum_to_at_most_one_per_image_query():
    q, k, v = qkv(2)
    capture = InspectAttentionOverride(WORDS, blocks=[0])
    call(capture, q, k, v)
    per_query = capture.result().maps.sum(-1)  # (b, n_img)
    assert (per_query <= 1 + 1e-6).all() and (per_query > 0).all()


def test_mass_is_the_share_of_text_attention_and_sums_to_at_most_one():
    q, k, v = qkv(3)
    capture = InspectAttentionOverride(WORDS, blocks=[0], head_reduction="max")  # mass ignores the head reduction
    call(capture, q, k, v)
    _, want, _, _ = raw_reference(q, k)
    mass = capture.result().mass
    assert torch.allclose(mass.double(), want, atol=1e-6)
    assert 0 < mass.sum() <= 1
    every_text_token = InspectAttentionOverride([torch.arange(N_TXT)], blocks=[0])
    call(every_text_token, q, k, v)
    assert torch.allclose(every_text_token.result().mass, torch.ones(1))


def test_maps_average_and_mass_pools_over_captured_blocks_and_sigmas():
    capture = InspectAttentionOverride(WORDS, blocks=[0, 1], sigmas=[0.9, 0.5])
    runs = [(qkv(10 + i), block, sigma) for i, (block, sigma) in enumerate([(0, 0.9), (1, 0.9), (0, 0.5)])]
    for (q, k, v), block, sigma in runs:
        call(capture, q, k, v, block=block, sigma=sigma)
    refs = [raw_reference(q, k) for (q, k, _), _, _ in runs]
    result = capture.result()
    assert result.calls == [(0, pytest.approx(0.9)), (1, pytest.approx(0.9)), (0, pytest.approx(0.5))]
    assert torch.allclose(result.maps.double(), sum(r[0] for r in refs) / 3, atol=1e-6)
    word = sum(r[2].sum(dim=(0, 1, 2)) for r in refs)
    text = sum(r[3][..., :N_TXT].sum() for r in refs)
    assert torch.allclose(result.mass.double(), word / text, atol=1e-6)


def test_other_blocks_single_blocks_and_other_sigmas_are_not_recorded():
    q, k, v = qkv(4)
    capture = InspectAttentionOverride(WORDS, blocks=[1], sigmas=[0.7])
    call(capture, q, k, v, block=0, sigma=0.7)
    call(capture, q, k, v, block=1, sigma=0.7, block_type="single")
    call(capture, q, k, v, block=1, sigma=0.3)
    assert capture.calls == []
    with pytest.raises(RuntimeError, match="no attention was captured"):
        capture.result()
    call(capture, q, k, v, block=1, sigma=0.7 + 1e-5)  # float32 round-off of the sampler's sigma
    assert len(capture.calls) == 1


def test_override_returns_the_kernel_output_object_unchanged():
    q, k, v = qkv(5)
    sentinel = object()
    capture = InspectAttentionOverride(WORDS, blocks=[0])
    got = capture(lambda *a, **kw: sentinel, q, k, v, H, skip_reshape=True,
                  transformer_options=options(block=1))
    assert got is sentinel
    expected = kernel(q, k, v, H)
    assert torch.equal(call(capture, q, k, v), expected)


def test_inner_override_is_called_instead_of_the_kernel():
    q, k, v = qkv(6)
    seen = []

    def inner(func, *args, **kwargs):
        seen.append(func)
        return func(*args, **kwargs)
    capture = InspectAttentionOverride(WORDS, blocks=[0], inner=inner)
    assert torch.equal(call(capture, q, k, v), kernel(q, k, v, H)) and seen == [kernel]


def test_only_conditional_rows_of_a_cfg_batch_are_captured():
    q, k, v = qkv(7, b=2)
    capture = InspectAttentionOverride(WORDS, blocks=[0])
    capture(kernel, q, k, v, H, skip_reshape=True, transformer_options=options(cond_or_uncond=[1, 0]))
    want, _, _, _ = raw_reference(q[1:], k[1:])
    assert torch.allclose(capture.result().maps.double(), want, atol=1e-6)
    capture(kernel, q, k, v, H, skip_reshape=True, transformer_options=options(cond_or_uncond=[1, 1]))
    assert len(capture.calls) == 1  # an uncond-only batch (sampler under memory pressure) is skipped


def test_boolean_attention_mask_is_honoured():
    q, k, v = qkv(8)
    mask = torch.ones(1, 1, N_TXT + N_IMG, N_TXT + N_IMG, dtype=torch.bool)
    mask[..., 2] = False  # nobody may attend to token 2
    capture = InspectAttentionOverride(WORDS, blocks=[0], query_chunk=7)
    call(capture, q, k, v, mask=mask)
    want, _, _, _ = raw_reference(q, k, mask=mask)
    assert torch.allclose(capture.result().maps.double(), want, atol=1e-6)


def output_space_reference(q, k, v, words, competitors, reduce):
    out = full_probs(q, k) @ v  # (b, h, n, d): attention outputs before the output projection
    concepts = torch.stack([out[:, :, idx].mean(2) for idx in [*words, *competitors]], dim=2)  # (b, h, c, d)
    scores = torch.einsum("bhid,bhcd->bhic", out[:, :, N_TXT:], concepts)
    scores = scores.sum(1) if reduce == "mean" else scores.amax(1) * q.shape[1]
    return scores.softmax(-1)[..., :len(words)]


@pytest.mark.parametrize("skip_output_reshape", [False, True])
@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_output_space_maps_equal_the_concept_attention_reference(reduce, skip_output_reshape):
    q, k, v = qkv(9)
    competitors = [torch.tensor([0, 1]), torch.tensor([9])]
    capture = InspectAttentionOverride(WORDS[:2], blocks=[0], head_reduction=reduce, mode="output_space",
                                  competitor_idx=competitors, query_chunk=5)
    call(capture, q, k, v, skip_output_reshape=skip_output_reshape)
    want = output_space_reference(q, k, v, WORDS[:2], competitors, reduce)
    got = capture.result().maps.double()
    assert torch.allclose(got, want, atol=1e-6)
    share = got.sum(-1)  # the competitors take the rest of each pixel's probability
    assert (share <= 1 + 1e-6).all() and (share < 0.99).any()


def test_output_space_over_every_concept_is_a_distribution_per_pixel():
    q, k, v = qkv(10)
    capture = InspectAttentionOverride(WORDS, blocks=[0], mode="output_space")
    call(capture, q, k, v)
    assert torch.allclose(capture.result().maps.sum(-1), torch.ones(B, N_IMG), atol=1e-6)


def test_missing_block_tags_or_text_length_are_clear_runtime_errors():
    q, k, v = qkv(11)
    capture = InspectAttentionOverride(WORDS, blocks=[0])
    with pytest.raises(RuntimeError, match="0.3.75"):
        capture(kernel, q, k, v, H, transformer_options={"sigmas": torch.tensor([0.5])})
    with pytest.raises(RuntimeError, match=N_TXT_KEY):
        capture(kernel, q, k, v, H, transformer_options={"block_type": "double", "block_index": 0})


def test_bad_settings_name_the_value():
    with pytest.raises(ValueError, match="'sum'"):
        InspectAttentionOverride(WORDS, blocks=[0], head_reduction="sum")
    with pytest.raises(ValueError, match="'cross'"):
        InspectAttentionOverride(WORDS, blocks=[0], mode="cross")


# --- Pure helpers ---------------------------------------------------------------------------------

def test_soft_masks_are_min_max_normalised_per_word_or_on_one_scale():
    maps = torch.stack([torch.linspace(0.1, 0.2, 12), torch.linspace(0.0, 0.8, 12), torch.full((12,), 0.3)])
    maps = maps.reshape(3, 3, 4)
    per_word = soft_masks(maps)
    assert per_word.shape == maps.shape and per_word.min() >= 0 and per_word.max() <= 1
    assert per_word[0].amax() == pytest.approx(1.0) and per_word[1].amin() == pytest.approx(0.0)
    assert torch.equal(per_word[2], torch.zeros(3, 4))  # a constant map shows nothing
    shared = soft_masks(maps, shared_scale=True)
    assert torch.allclose(shared, maps / 0.8, atol=1e-6)  # global min 0, max 0.8: ratios kept


def test_upsample_keeps_range_and_to_grid_is_row_major():
    maps = torch.arange(6.0).reshape(1, 6, 1)  # (b, n_img, w) for a 2x3 token grid
    grid = to_grid(maps, (2, 3))
    assert grid.shape == (1, 1, 2, 3) and grid[0, 0, 1, 0] == 3.0
    with pytest.raises(ValueError, match="2x2"):
        to_grid(maps, (2, 2))
    up = upsample(soft_masks(grid[0]), (32, 48))
    assert up.shape == (1, 32, 48) and up.min() >= 0 and up.max() <= 1


@pytest.mark.parametrize("text, want", [("-1", (18,)), ("10-12", (10, 11, 12)), ("0, 5, -2", (0, 5, 17)),
                                        ("-3--1", (16, 17, 18)), ("3,3", (3,))])
def test_parse_blocks(text, want):
    assert parse_blocks(text, depth=19) == want


@pytest.mark.parametrize("text, match", [("", "empty"), ("19", "does not exist"), ("-20", "does not exist"),
                                         ("5-2", "backwards"), ("last", "'last'")])
def test_parse_blocks_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_blocks(text, depth=19)


def test_parse_sigmas():
    assert parse_sigmas("0.9, 0.7,0.5, 0.9") == (0.9, 0.7, 0.5)
    for text, match in [("", "empty"), ("1.5", "outside"), ("high", "'high'")]:
        with pytest.raises(ValueError, match=match):
            parse_sigmas(text)


def test_words_default_to_every_prompt_word_once():
    assert prompt_words("A nude girl, a girl's (hat:1.2)") == ("A", "nude", "girl", "girl's", "hat", "1", "2")
    assert split_words("", "a cat and a dog") == ("a", "cat", "and", "dog")
    assert split_words(" Van  Gogh , cat,cat", "x") == ("Van Gogh", "cat")

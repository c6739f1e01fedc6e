"""Attention Map Inspect in real ComfyUI (in-process, CPU, tiny Flux + tiny CLIP), run the way the executor
runs nodes: a class clone with hidden inputs, under torch.inference_mode()."""


import pytest
import torch
from einops import rearrange
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from eraseanything_core.concepts import concept_token_idx
from eraseanything_core.vocabulary import VOCABULARY
from tests import comfy_host

PROMPT = "a nude girl on a beach at sunset"
SETTINGS = dict(sigmas="0.9, 0.5", blocks="0-1", head_reduction="mean", mode="attention", shared_scale=False, seed=7)


@pytest.fixture(scope="module")
def pack():
    """The repo imported as ComfyUI imports a custom node pack: a package by directory."""
    node = comfy_host.import_pack_module("nodes.inspect").AttentionMapInspect
    runtime = comfy_host.import_pack_module("nodes.inspect_runtime")
    return node.PREPARE_CLASS_CLONE({}), runtime


@pytest.fixture
def latent():
    return {"samples": torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(1))}


@pytest.fixture
def unload_models():
    import comfy.model_management
    yield
    comfy.model_management.unload_all_models()


def run_node(node, model, clip, prompt, words, latent, **changes):
    with torch.inference_mode():
        return node.execute(model, clip, prompt, words, latent=latent, **{**SETTINGS, **changes}).result


def test_node_gives_one_overlay_mask_and_share_per_word_deterministically(pack, tiny_flux, tiny_clip, latent,
                                                                           unload_models):
    node, _ = pack
    grid, masks, report = run_node(node, tiny_flux, tiny_clip, PROMPT, "nude, girl, sunset", latent)
    assert masks.shape == (3, 128, 128) and masks.min() >= 0 and masks.max() <= 1
    assert grid.ndim == 4 and grid.shape[0] == 1 and grid.shape[-1] == 3  # one row of 3 tiles of 128 px
    assert grid.shape[1:3] == (128, 3 * 128)
    assert all(f"{w}:" in report for w in ("nude", "girl", "sunset")) and "%" in report
    again = run_node(node, tiny_flux, tiny_clip, PROMPT, "nude, girl, sunset", latent)
    assert torch.equal(grid, again[0]) and torch.equal(masks, again[1]) and report == again[2]
    other_seed = run_node(node, tiny_flux, tiny_clip, PROMPT, "nude, girl, sunset", latent, seed=8)
    assert not torch.equal(masks, other_seed[1])
    _, masks_os, _ = run_node(node, tiny_flux, tiny_clip, PROMPT, "", latent, mode="output_space", shared_scale=True)
    assert masks_os.shape == (7, 128, 128)  # every word of the prompt
    assert 0.9 < masks_os.max() <= 1  # one scale for all words: only the top word reaches ~1


def spy_on_captured_calls(runtime, monkeypatch):
    """Keep q, k and the kernel's output of every call the capture records (the inputs ComfyUI passed)."""
    original = runtime.InspectAttentionOverride.__call__
    seen = []

    def spy(self, func, q, k, v, heads, *args, **kwargs):
        before = len(self.calls)
        out = original(self, func, q, k, v, heads, *args, **kwargs)
        if len(self.calls) > before:
            seen.append((q.double().clone(), k.double().clone(), v.double().clone(), out.double().clone()))
        return out
    monkeypatch.setattr(runtime.InspectAttentionOverride, "__call__", spy)
    return seen


def test_raw_maps_are_the_softmax_columns_of_the_q_k_that_flux_attended_with(pack, tiny_flux, tiny_clip, latent,
                                                                              monkeypatch, unload_models):
    _, runtime = pack
    seen = spy_on_captured_calls(runtime, monkeypatch)
    with torch.inference_mode():
        result = runtime.inspect(tiny_flux, tiny_clip, PROMPT, "nude, girl", latent=latent, **SETTINGS)
    assert len(seen) == 4  # blocks 0 and 1 at two sigmas
    word_idx = [concept_token_idx(tiny_clip.tokenizer, PROMPT, w) for w in ("nude", "girl")]
    n_txt = 256
    maps, word_mass, text_mass = 0, 0, 0
    for q, k, v, out in seen:
        probs = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)  # (1, h, n, n), the full softmax
        assert torch.allclose(rearrange(probs @ v, "b h n d -> b n (h d)"), out, atol=1e-5)  # what Flux used
        per_word = torch.stack([probs[:, :, n_txt:][..., idx].sum(-1) for idx in word_idx], -1)  # (1, h, n_img, w)
        maps = maps + per_word.mean(1)[0]
        word_mass = word_mass + per_word.sum(dim=(0, 1, 2))
        text_mass = text_mass + probs[:, :, n_txt:, :n_txt].sum()
    got = rearrange(result.maps, "w gh gw -> (gh gw) w").double()
    assert torch.allclose(got, maps / len(seen), atol=1e-6)
    assert (got.sum(-1) <= 1 + 1e-6).all()  # per image query, probabilities over all keys sum to 1
    assert torch.allclose(result.mass.double(), word_mass / text_mass, atol=1e-6) and result.mass.sum() <= 1


def test_capturing_leaves_a_comfyui_sample_bit_identical(pack, tiny_flux, tiny_clip, unload_models):
    import comfy.sample
    import comfy.samplers
    _, runtime = pack
    positive = tiny_clip.encode_from_tokens_scheduled(tiny_clip.tokenize(PROMPT))
    negative = tiny_clip.encode_from_tokens_scheduled(tiny_clip.tokenize("blurry"))
    idx = [concept_token_idx(tiny_clip.tokenizer, PROMPT, "nude")]
    capture = runtime.InspectAttentionOverride(idx, blocks=(0, 1), sigmas=None, mode="output_space", query_chunk=16)
    captured = tiny_flux.clone()
    options = captured.model_options.setdefault("transformer_options", {})
    options.update({runtime.OVERRIDE_KEY: capture, runtime.N_TXT_KEY: 256})
    latent = torch.zeros(1, 16, 16, 16)

    def sample(model):
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(3))
        with torch.inference_mode():
            return comfy.sample.sample(model, noise, 2, 2.5, "euler", "simple", positive, negative, latent,
                                       disable_pbar=True, seed=3)
    plain, with_capture = sample(tiny_flux), sample(captured)
    assert torch.equal(plain, with_capture)
    assert len(capture.calls) == 4  # 2 blocks x 2 steps, cond rows of each CFG batch
    schedule = comfy.samplers.calculate_sigmas(tiny_flux.get_model_object("model_sampling"), "simple", 2)[:-1]
    assert [s for _, s in capture.calls[::2]] == pytest.approx(schedule.tolist())  # each step, blocks 0 and 1


class LargestTensor(TorchDispatchMode):
    """Largest numel of any tensor an ATen op returns while active (views included: an upper bound)."""

    def __init__(self):
        super().__init__()
        self.largest, self.paused = 0, False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.paused:
            sizes = [t.numel() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            self.largest = max([self.largest, *sizes])
        return out


@pytest.mark.parametrize("mode", ["attention", "output_space"])
def test_long_prompt_capture_never_makes_an_n_by_n_tensor(pack, tiny_flux, tiny_clip, monkeypatch, mode,
                                                          unload_models):
    _, runtime = pack
    prompt = " ".join(w for w in VOCABULARY if " " not in w)[:2000].rsplit(" ", 1)[0]
    assert len(prompt.split()) >= 200
    chunk = 16
    monkeypatch.setattr(runtime, "QUERY_CHUNK", chunk)
    meter, shapes = LargestTensor(), []
    original = runtime.InspectAttentionOverride.__call__

    def measured(self, func, q, k, v, heads, *args, **kwargs):
        def kernel(*a, **kw):  # ComfyUI's own attention is not ours to bound
            meter.paused = True
            try:
                return func(*a, **kw)
            finally:
                meter.paused = False
        shapes.append(tuple(q.shape))
        with meter:
            return original(self, kernel, q, k, v, heads, *args, **kwargs)
    monkeypatch.setattr(runtime.InspectAttentionOverride, "__call__", measured)
    latent = {"samples": torch.randn(1, 16, 24, 24, generator=torch.Generator().manual_seed(2))}
    words = prompt.split()[0] + ", " + prompt.split()[150]
    with torch.inference_mode():
        result = runtime.inspect(tiny_flux, tiny_clip, prompt, words, latent=latent, sigmas="0.6", blocks="-1",
                                 mode=mode)
    b, h, n, d = shapes[0]
    n_img = 12 * 12
    n_txt = n - n_img
    assert n_txt > 256 and chunk < n_img and result.maps.shape == (2, 12, 12)
    assert meter.largest <= max(b * h * chunk * n, b * h * n * d)  # one chunk of logits, or q/k/v-sized
    assert meter.largest < h * n_img * n < h * n * n  # never even the image rows over all keys


def test_image_and_vae_are_encoded_when_no_latent_is_connected(pack, tiny_flux, tiny_clip, unload_models):
    node, _ = pack

    class StubVAE:  # stands in for comfy.sd.VAE: only encode is called on this path
        def encode(self, pixels):
            assert pixels.shape == (1, 64, 64, 3)
            return torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(4))
    image = torch.full((1, 64, 64, 3), 0.8)
    with torch.inference_mode():
        grid, masks, _ = node.execute(tiny_flux, tiny_clip, PROMPT, "girl", image=image, vae=StubVAE(),
                                      **SETTINGS).result
    assert masks.shape == (1, 64, 64) and grid.shape == (1, 128, 128, 3)  # a small picture is shown 2x
    assert grid[0, -1, -1].mean() > 0.3  # the light image shows through the overlay (a grey one would not)


def test_errors_say_what_to_connect_or_type(pack, tiny_flux, tiny_clip, latent):
    node, _ = pack
    with pytest.raises(ValueError, match="connect a LATENT"):
        run_node(node, tiny_flux, tiny_clip, PROMPT, "girl", None)
    with pytest.raises(ValueError, match=r"'dog' is not in the prompt 'a nude girl on a beach at sunset'"):
        run_node(node, tiny_flux, tiny_clip, PROMPT, "girl, dog", latent)
    with pytest.raises(ValueError, match="2 double blocks"):
        run_node(node, tiny_flux, tiny_clip, PROMPT, "girl", latent, blocks="5")
    with pytest.raises(ValueError, match="prompt is empty"):
        run_node(node, tiny_flux, tiny_clip, " ", "", latent)

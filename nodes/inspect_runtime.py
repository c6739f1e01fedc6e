"""What Attention Map Inspect does inside ComfyUI: words -> token positions, one Flux forward per sigma
with the capture as the attention override, then masks, a labelled overlay grid and a text report.

The model runs through the adapter's FluxRunner (the pack's one way of calling a Flux) on a clone of the
input ModelPatcher, loaded as a sampler loads it, with its own blocks and transformer_options plus the
capture, the text length and the sigma. Sampler-level wrappers (`model_function_wrapper`) are not
applied: this is one model call per sigma, not a sampler run. Everything random comes from `seed`, so
the outputs are deterministic: run the node on two MODEL inputs (before / after an erasure) with the
same seed to compare them.
"""

import logging
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw

import comfy.model_management
import comfy.utils

from ..eraseanything_core.attention_maps import (N_TXT_KEY, InspectAttentionOverride, parse_blocks, parse_sigmas,
                                                 prompt_words, soft_masks, split_words, to_grid, upsample)
from ..eraseanything_core.comfy.flux import FluxRunner, check_flux
from ..eraseanything_core.comfy.text import encode_prompt
from ..eraseanything_core.concepts import concept_token_idx
from ..eraseanything_core.runner import token_grid
from . import visual

log = logging.getLogger(__name__)

OVERRIDE_KEY = "optimized_attention_override"
QUERY_CHUNK = 1024   # image queries per chunk of logits: peak (h, 1024, n) float32 per attention call
GUIDANCE = 3.5       # FLUX.1-dev's distilled guidance, ComfyUI's default when no FluxGuidance node is used
PIXELS_PER_LATENT = 8  # Flux VAE, used when no vae is connected
TILE_MAX = 512       # long side of one overlay tile in the grid, in pixels
TILE_MIN = 128       # small pictures (the demo world's 32 px) are enlarged, nearest-neighbour, to at least this
GRID_COLUMNS = 4
GREY = (128, 128, 128)


@dataclass
class Inspection:
    words: tuple[str, ...]
    maps: torch.Tensor     # (w, gh, gw) raw maps on the image-token grid, mean over blocks and sigmas
    mass: torch.Tensor     # (w,) share of the image queries' text attention per word
    masks: torch.Tensor    # (w, H, W) soft masks in [0, 1] at pixel size
    grid: torch.Tensor     # (1, GH, GW, 3) IMAGE
    report: str


def check_text_inputs(prompt: str, words: str, sigmas: str | None = None):
    """The checks that need no model: a prompt, typed words that are in it, noise levels that parse.
    Run at queue time (the node's validate_inputs) and again when the node runs."""
    if not (prompt or "").strip():
        raise ValueError("prompt is empty: type the prompt whose words you want to inspect.")
    if (words or "").strip():
        for word in split_words(words, prompt):
            if " ".join(word.lower().split()) not in " ".join(prompt.lower().split()):
                raise ValueError(f"words: {word!r} is not in the prompt {prompt!r}. Type words that appear in the "
                                 "prompt (comma-separated), or leave words empty to inspect every word.")
    if sigmas is not None:
        parse_sigmas(sigmas)


def _locate_words(tokenizer, prompt: str, words: str) -> tuple[tuple[str, ...], list[torch.Tensor]]:
    """The words to show and each one's T5 token positions. Typed words must be in the prompt; with
    words empty, every prompt word whose tokens can be found (weight syntax such as ':1.2' is skipped)."""
    check_text_inputs(prompt, words)
    picked = split_words(words, prompt)
    typed = bool((words or "").strip())
    found_words, found_idx = [], []
    for word in picked:
        try:
            idx = concept_token_idx(tokenizer, prompt, word)
        except ValueError as e:
            if typed:
                raise ValueError(f"words: cannot find the T5 tokens of {word!r} in the prompt {prompt!r} ({e})") from e
            log.debug("Attention Map Inspect: skipping %r (%s)", word, e)
            continue
        found_words.append(word)
        found_idx.append(idx)
    if not found_words:
        raise ValueError(f"prompt: no word of {prompt!r} has T5 tokens to inspect; type a prompt made of words.")
    return tuple(found_words), found_idx


def _competitors(tokenizer, prompt: str, words: tuple[str, ...], word_idx: list[torch.Tensor]) -> list[torch.Tensor]:
    """Token positions of the other prompt words (no token shared with a shown word): in output-space
    mode a shown word competes with the rest of the prompt in the softmax over concepts."""
    taken = set(torch.cat(word_idx).tolist())
    shown = {w.lower() for w in words}
    out = []
    for word in prompt_words(prompt):
        if word.lower() in shown:
            continue
        try:
            idx = concept_token_idx(tokenizer, prompt, word)
        except ValueError:
            continue
        if not taken & set(idx.tolist()):
            out.append(idx)
    return out


def _latent(model, latent, image, vae) -> torch.Tensor:
    """The raw latent to inspect, (1, c, h, w) float32 on the CPU: the latent input, else image + vae."""
    if latent is not None:
        samples = latent["samples"]
    elif image is not None and vae is not None:
        samples = vae.encode(image[:1, :, :, :3])
    else:
        raise ValueError("Attention Map Inspect needs something to look at: connect a LATENT (e.g. from "
                         "KSampler), or an IMAGE together with the VAE that encodes it.")
    channels = model.model.latent_format.latent_channels
    if samples.ndim != 4 or samples.shape[1] != channels:
        raise ValueError(f"latent: shape {tuple(samples.shape)} is not a Flux image latent (b, {channels}, h, w); "
                         "connect a latent made by the Flux VAE or an Empty Latent Image for Flux.")
    if samples.shape[0] > 1:
        log.warning("Attention Map Inspect: the latent holds %d images; inspecting the first.", samples.shape[0])
    return samples[:1].detach().float().cpu()


def _background(x0, latent, image, vae) -> tuple[Image.Image, tuple[int, int]]:
    """The picture under the heat maps and the pixel size (H, W) of the masks."""
    if latent is None:  # the image was encoded
        pixels = image[0, :, :, :3]
    elif vae is not None:
        pixels = vae.decode(x0)[0, :, :, :3]  # (H, W, 3)
    else:
        size = (x0.shape[2] * PIXELS_PER_LATENT, x0.shape[3] * PIXELS_PER_LATENT)
        return Image.new("RGB", (size[1], size[0]), GREY), size
    array = (pixels.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(array), tuple(pixels.shape[:2])


def _forward_each_sigma(run: FluxRunner, x0: torch.Tensor, cond, sigmas, seed: int, node_id, options: dict):
    """One model call per sigma on x_t = (1 - sigma) x0 + sigma noise (model space), with `options` added
    to the transformer_options; the capture among them records."""
    x0 = run.patcher.model.process_latent_in(x0)  # (1, c, h, w)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    guidance = torch.full((x0.shape[0],), GUIDANCE)
    pbar = comfy.utils.ProgressBar(len(sigmas), node_id=node_id)
    for sigma in sigmas:
        comfy.model_management.throw_exception_if_processing_interrupted()
        x_t = (1.0 - sigma) * x0 + sigma * noise
        with torch.no_grad():
            run.forward(x_t, torch.full((x0.shape[0],), sigma), cond.context, cond.pooled, guidance,
                        transformer_options=options)
        pbar.update(1)


def _tile(background: Image.Image, mask: torch.Tensor, label: str) -> Image.Image:
    """One overlay: the heat map of a (H, W) mask blended on the background, labelled top-left."""
    heat = visual.heatmap(mask, size=max(mask.shape))
    enlarging = heat.size[0] > background.width
    tile = Image.blend(background.resize(heat.size, Image.NEAREST if enlarging else Image.BILINEAR), heat, 0.55)
    draw = ImageDraw.Draw(tile)
    box = draw.textbbox((3, 2), label)
    draw.rectangle([0, 0, box[2] + 3, box[3] + 2], fill=(0, 0, 0))
    draw.text((3, 2), label, fill=(255, 255, 255))
    return tile


def _grid(background: Image.Image, soft: torch.Tensor, words, mass) -> torch.Tensor:
    """(1, GH, GW, 3) IMAGE: one labelled overlay per word, GRID_COLUMNS per row."""
    h, w = background.height, background.width
    scale = TILE_MAX / max(h, w) if max(h, w) > TILE_MAX else float(max(1, TILE_MIN // max(h, w)))
    tile_hw = (max(1, round(h * scale)), max(1, round(w * scale)))
    tiles = [_tile(background, m, f"{word}  {share * 100:.1f}%")
             for word, m, share in zip(words, upsample(soft, tile_hw), mass.tolist())]
    cols = min(GRID_COLUMNS, len(tiles))
    rows = -(-len(tiles) // cols)
    canvas = Image.new("RGB", (cols * tile_hw[1], rows * tile_hw[0]), (24, 24, 24))
    for i, tile in enumerate(tiles):
        canvas.paste(tile, ((i % cols) * tile_hw[1], (i // cols) * tile_hw[0]))
    return visual.to_image_tensor(canvas)


def _report(words, mass, mode, head_reduction, blocks, sigmas) -> str:
    lines = [f"Attention Map Inspect: mode {mode}, heads {head_reduction}, double blocks {list(blocks)}, "
             f"sigmas {list(sigmas)}", "share of the image's attention to the prompt that each word receives:"]
    lines += [f"{word}: {share * 100:.2f} %" for word, share in zip(words, mass.tolist())]
    return "\n".join(lines)


def inspect(model, clip, prompt: str, words: str, *, latent=None, image=None, vae=None, sigmas="0.9, 0.7, 0.5",
            blocks="-1", head_reduction="mean", mode="attention", shared_scale=False, seed=0,
            node_id=None) -> Inspection:
    """Run the inspection; arguments are the node's inputs (see nodes/inspect.py for their meaning)."""
    dm = check_flux(model)
    check_text_inputs(prompt, words)
    sigma_list, block_list = parse_sigmas(sigmas), parse_blocks(blocks, len(dm.double_blocks))
    shown, word_idx = _locate_words(clip.tokenizer, prompt, words)
    others = _competitors(clip.tokenizer, prompt, shown, word_idx) if mode == "output_space" else ()
    x0 = _latent(model, latent, image, vae)
    cond = encode_prompt(clip, prompt, torch.zeros(0, dtype=torch.long))
    log.info("Attention Map Inspect: %d words, mode %s, blocks %s, sigmas %s, seed %d",
             len(shown), mode, list(block_list), list(sigma_list), seed)

    existing = model.model_options.get("transformer_options", {}).get(OVERRIDE_KEY)
    capture = InspectAttentionOverride(word_idx, block_list, sigma_list, head_reduction, mode, others,
                                       query_chunk=QUERY_CHUNK, inner=existing)
    run = FluxRunner(model)
    run.load(trainable=False)
    _forward_each_sigma(run, x0, cond, sigma_list, seed, node_id,
                        {OVERRIDE_KEY: capture, N_TXT_KEY: cond.context.shape[1]})
    result = capture.result()

    maps = to_grid(result.maps, token_grid(x0.shape[2:]))[0]  # (w, gh, gw)
    soft = soft_masks(maps, shared_scale)
    background, pixel_hw = _background(x0, latent, image, vae)
    return Inspection(words=shown, maps=maps, mass=result.mass, masks=upsample(soft, pixel_hw),
                      grid=_grid(background, soft, shown, result.mass),
                      report=_report(shown, result.mass, mode, head_reduction, block_list, sigma_list))

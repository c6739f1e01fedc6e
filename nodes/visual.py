"""Pictures for the graph: the loss chart and attention heat maps (PIL only, no plotting library)."""

import numpy as np
import torch
from PIL import Image, ImageDraw

# Viridis at 5 stops; linear interpolation between them is close enough for a heat map.
_VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)
_COLOURS = {"esd": (230, 85, 13), "attn": (49, 130, 189), "fm": (49, 163, 84), "fm_irrelevant": (161, 217, 155), "retain": (253, 174, 107), "rsc": (117, 107, 177),
            "total": (220, 220, 220)}


def heatmap(values: torch.Tensor, size: int = 256) -> Image.Image:
    """(h, w) values in [0, 1] -> an RGB PIL image, nearest-neighbour upscaled to `size` on the long side."""
    v = values.clamp(0, 1).cpu().numpy() * (len(_VIRIDIS) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_VIRIDIS) - 2)
    frac = (v - lo)[..., None]
    rgb = _VIRIDIS[lo] * (1 - frac) + _VIRIDIS[lo + 1] * frac
    img = Image.fromarray(rgb.astype(np.uint8))
    scale = max(1, size // max(values.shape))
    return img.resize((values.shape[1] * scale, values.shape[0] * scale), Image.NEAREST)


EMA_ALPHA = 0.1  # smoothing of the bold line, as in the live chart (web/lib/loss_chart.js)


def ema(values: list[float], alpha: float = EMA_ALPHA) -> list[float]:
    out: list[float] = []
    for v in values:
        out.append(v if not out else out[-1] + alpha * (v - out[-1]))
    return out


def loss_chart(history: list[dict], width: int = 640, panel_height: int = 110) -> Image.Image:
    """One panel per loss term, each on its own scale (they differ by orders of magnitude): the raw values
    faint, their EMA bold, the value range at the left, a step axis under the last panel."""
    terms = [t for t in _COLOURS if any(t in h for h in history)]
    axis = 14
    img = Image.new("RGB", (width, max(1, len(terms)) * panel_height + axis), (24, 24, 24))
    draw = ImageDraw.Draw(img)
    steps = max((h["step"] for h in history), default=1)
    left, right = 52, width - 10

    def x_of(step):
        return left + (step - 1) / max(1, steps - 1) * (right - left)

    for row, term in enumerate(terms):
        top = row * panel_height
        points = [(h["step"], h[term]) for h in history if term in h]
        smooth = ema([v for _, v in points])
        lo, hi = min(v for _, v in points), max(v for _, v in points)
        span = (hi - lo) or 1.0

        def xy(values):
            return [(x_of(s), top + 18 + (hi - v) / span * (panel_height - 30)) for (s, _), v in zip(points, values)]

        draw.rectangle([left, top + 16, right, top + panel_height - 10], outline=(70, 70, 70))
        faint = tuple(int(c * 0.45 + 24 * 0.55) for c in _COLOURS[term])
        raw, bold = xy([v for _, v in points]), xy(smooth)
        if len(raw) > 1:
            draw.line(raw, fill=faint, width=1)
            draw.line(bold, fill=_COLOURS[term], width=2)
        else:
            draw.point(raw, fill=_COLOURS[term])
        draw.text((4, top + 14), f"{hi:.3g}", fill=(150, 150, 150))
        draw.text((4, top + panel_height - 22), f"{lo:.3g}", fill=(150, 150, 150))
        draw.text((left + 4, top + 2), f"{term}  smoothed {smooth[-1]:.4g}  last {points[-1][1]:.4g}  "
                                       f"min {lo:.4g}  max {hi:.4g}", fill=_COLOURS[term])
    bottom = len(terms) * panel_height
    for step in sorted({1, (steps + 1) // 2, steps}):
        label = f"step {step}" if step == steps else str(step)
        w = draw.textlength(label)
        x = min(max(x_of(step) - w / 2, left), right - w)
        draw.text((x, bottom), label, fill=(150, 150, 150))
    return img


def latent_picture(x0: torch.Tensor, latent_format) -> Image.Image | None:
    """A model-space latent (c, h, w) as RGB at latent resolution, by the latent format's linear RGB factors
    (ComfyUI's own cheap latent preview); None when the format has none."""
    factors = getattr(latent_format, "latent_rgb_factors", None)
    if factors is None:
        return None
    weight = torch.tensor(factors, dtype=torch.float32)  # (c, 3)
    bias = torch.tensor(getattr(latent_format, "latent_rgb_factors_bias", None) or [0.0, 0.0, 0.0])
    rgb = torch.einsum("chw,ck->hwk", x0.float().cpu(), weight) + bias
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(pixels)


def overlay(values: torch.Tensor, picture: Image.Image | None, size: int = 256) -> Image.Image:
    """The (h, w) heat map in [0, 1] blended on a picture (nearest-neighbour to the map's size), or the bare
    heat map without one."""
    heat = heatmap(values, size)
    if picture is None:
        return heat
    return Image.blend(picture.convert("RGB").resize(heat.size, Image.NEAREST), heat, 0.5)


def to_image_tensor(img: Image.Image) -> torch.Tensor:
    """PIL -> ComfyUI IMAGE (1, H, W, 3) float in [0, 1]."""
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]

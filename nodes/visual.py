"""Pictures for the graph: the loss chart and attention heat maps (PIL only, no plotting library)."""

import numpy as np
import torch
from PIL import Image, ImageDraw

# Viridis at 5 stops; linear interpolation between them is close enough for a heat map.
_VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)
_COLOURS = {"esd": (230, 85, 13), "attn": (49, 130, 189), "fm": (49, 163, 84), "fm_irrelevant": (161, 217, 155), "rsc": (117, 107, 177),
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


def loss_chart(history: list[dict], width: int = 640, panel_height: int = 110) -> Image.Image:
    """One panel per loss term (each on its own scale, since they differ by orders of magnitude)."""
    terms = [t for t in _COLOURS if any(t in h for h in history)]
    img = Image.new("RGB", (width, max(1, len(terms)) * panel_height), (24, 24, 24))
    draw = ImageDraw.Draw(img)
    steps = max((h["step"] for h in history), default=1)
    for row, term in enumerate(terms):
        top = row * panel_height
        points = [(h["step"], h[term]) for h in history if term in h]
        lo, hi = min(v for _, v in points), max(v for _, v in points)
        span = (hi - lo) or 1.0
        xy = [(40 + (s - 1) / max(1, steps - 1) * (width - 50), top + 18 + (hi - v) / span * (panel_height - 30))
              for s, v in points]
        draw.rectangle([40, top + 16, width - 10, top + panel_height - 10], outline=(70, 70, 70))
        if len(xy) > 1:
            draw.line(xy, fill=_COLOURS[term], width=2)
        else:
            draw.point(xy, fill=_COLOURS[term])
        draw.text((44, top + 2), f"{term}  last {points[-1][1]:.4g}  min {lo:.4g}  max {hi:.4g}", fill=_COLOURS[term])
    return img


def to_image_tensor(img: Image.Image) -> torch.Tensor:
    """PIL -> ComfyUI IMAGE (1, H, W, 3) float in [0, 1]."""
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]

"""The demo world's VAE: a fixed, lossless pixel unshuffle, no weights.

A 32x32 RGB image in [-1, 1] becomes 2x2 pixel blocks: 12 channels of 16x16 (b, 12, 16, 16). FLUX.1 wants
16 latent channels, so 4 constant channels are appended (model space 0: the transformer learns to leave
them at 0, and the decoder ignores them). ComfyUI's Flux latent format maps a raw latent z to model space
as (z - shift) * scale; the encoder applies the inverse, so the transformer sees the pixels themselves,
in [-1, 1]:  z = x / scale + shift  (x the unshuffled pixels, or 0 in the padding channels).
Round trip: decode(encode(image)) == image up to float rounding.
"""

import torch
from einops import rearrange

FLUX_SCALE = 0.3611  # comfy.latent_formats.Flux.scale_factor
FLUX_SHIFT = 0.1159  # comfy.latent_formats.Flux.shift_factor
LATENT_CHANNELS = 16
PIXEL_CHANNELS = 12  # 3 colours x (2 x 2) pixels


def pixels_to_model_space(pixels: torch.Tensor) -> torch.Tensor:
    """pixels (b, 3, H, W) in [-1, 1] -> model-space latent (b, 16, H/2, W/2), what the transformer sees."""
    x = rearrange(pixels, "b c (h p) (w q) -> b (c p q) h w", p=2, q=2)  # (b, 12, H/2, W/2)
    pad = x.new_zeros((x.shape[0], LATENT_CHANNELS - PIXEL_CHANNELS) + x.shape[2:])
    return torch.cat([x, pad], dim=1)


def model_space_to_pixels(x: torch.Tensor) -> torch.Tensor:
    """model-space latent (b, 16, h, w) -> pixels (b, 3, 2h, 2w), not clamped."""
    return rearrange(x[:, :PIXEL_CHANNELS], "b (c p q) h w -> b c (h p) (w q)", p=2, q=2)


class PixelUnshuffleVAE(torch.nn.Module):
    """What `comfy.sd.VAE.first_stage_model` needs: encode (b, 3, H, W) in [-1, 1] -> raw latent
    (b, 16, H/2, W/2), and decode back. The single parameter only exists so that ComfyUI's model
    management has something to place (as in ComfyUI's own PixelspaceConversionVAE)."""

    def __init__(self):
        super().__init__()
        self.pixel_space_vae = torch.nn.Parameter(torch.tensor(1.0))

    def encode(self, pixels: torch.Tensor, *_args, **_kwargs) -> torch.Tensor:
        return pixels_to_model_space(pixels) / FLUX_SCALE + FLUX_SHIFT

    def decode(self, z: torch.Tensor, *_args, **_kwargs) -> torch.Tensor:
        return model_space_to_pixels((z - FLUX_SHIFT) * FLUX_SCALE)

"""Running a ComfyUI model object outside a sampler node: one denoising call, and Euler sampling.

Both go through `BaseModel.apply_model` with the patcher's own transformer_options, so LoRAs patched in
by ComfyUI's loader and attention overrides apply exactly as in a KSampler run (sampler-level wrappers,
`model_function_wrapper`, are not: these are plain model calls).
"""

import torch

import comfy.model_management
import comfy.samplers


def load(patcher):
    comfy.model_management.load_models_gpu([patcher])


def flux_sigmas(patcher, steps: int) -> torch.Tensor:
    """The model's own "simple" schedule: steps + 1 sigmas from sigma_max down to 0, on the CPU."""
    return comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "simple", steps).cpu()


def denoise(patcher, x_t: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor,
            guidance: torch.Tensor, transformer_options: dict | None = None) -> torch.Tensor:
    """The denoised estimate x0 (b, c, h, w) at x_t (b, c, h, w), sigma (b,), guidance (b,), in model space.
    transformer_options are added to the patcher's own."""
    options = {**patcher.model_options.get("transformer_options", {}), **(transformer_options or {}), "sigmas": sigma}
    return patcher.model.apply_model(x_t, sigma, c_crossattn=context, y=pooled, guidance=guidance,
                                     transformer_options=options)


def euler(patcher, noise: torch.Tensor, sigmas: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor,
          guidance: float) -> torch.Tensor:
    """Sample from noise (b, c, h, w) over sigmas (on the patcher's device) with Euler, as comfy's
    sample_euler with cfg 1 and FluxGuidance: the model-space latent at sigma 0."""
    b = noise.shape[0]
    g = torch.full((b,), guidance, device=noise.device)
    x = noise * sigmas[0]  # CONST noise scaling of an empty latent
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        s = sigma.expand(b)
        denoised = denoise(patcher, x, s, context, pooled, g)
        x = x + (x - denoised) / sigma * (sigma_next - sigma)
    return x

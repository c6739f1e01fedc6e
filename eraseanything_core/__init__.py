"""EraseAnything (ICML 2025) for ComfyUI's Flux: the method, in plain torch.

Only `comfy_flux` imports ComfyUI; everything else is testable without the host.

Axis legend used in shape comments throughout the package:
    b      batch
    h      attention heads
    n_txt  text (T5) tokens; the joint sequence is [txt | img]
    n_img  image tokens (2x2 latent patches)
    n      n_txt + n_img
    d      head dimension
    c      latent channels
    r      LoRA rank
    k      concept tokens (key columns)
"""

__version__ = "0.1.0"

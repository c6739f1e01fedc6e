"""EraseAnything (ICML 2025) for ComfyUI's Flux: the method, in plain torch.

Only the adapter package `comfy/` imports ComfyUI; everything else is plain torch, testable without
the host (docs/architecture.md).

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

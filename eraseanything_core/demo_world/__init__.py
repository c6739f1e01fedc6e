"""The embedded demo world: 32x32 coloured shapes (shapes.py), a tiny FLUX.1 with a T5 + CLIP-L
pair built from ComfyUI's own classes (model.py), a pixel-unshuffle VAE (vae.py), the training objective
and sampler (training.py) and the judge that scores pictures (judge.py). Importing does nothing."""

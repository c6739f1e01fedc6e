"""The adapter: the only code of the core that imports ComfyUI.

flux        ComfyUI's Flux as the trainer's Runner; build_runner (the LoRA for a MODEL) and train
text        ComfyUI's CLIP as the trainer's TextEncoder
sampling    one denoising call and Euler sampling through ComfyUI's model object (Inspect, the demo world)
demo_world  the demo world's Flux, text encoders and VAE built from ComfyUI's classes
"""

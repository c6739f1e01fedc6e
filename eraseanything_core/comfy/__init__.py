"""The adapter: the only code of the core that imports ComfyUI.

flux        FluxRunner: every call of a Flux (Train, Inspect, the demo world's sampling and training);
            build_runner (the LoRA for a MODEL) and train
text        ComfyUI's CLIP as the trainer's TextEncoder
demo_world  the demo world's Flux, text encoders and VAE built from ComfyUI's classes; its sampler
"""

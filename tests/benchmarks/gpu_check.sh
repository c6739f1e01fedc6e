#!/usr/bin/env bash
# Seconds per training step and peak VRAM of an erasure run on a FLUX.1-dev-shaped model (random
# weights, no network), bf16 and fp8 base weights, with and without checkpointing. Needs one CUDA GPU
# and under 8 minutes on an H200. `--tiny`: the same code path on the CPU with the tiny Flux (CI).
# Python: $PYTHON, else the test venv ($EA_CACHE/venv), else python3; ComfyUI: $EA_COMFY_DIR, else
# $EA_CACHE/comfyui (see tests/comfy_host.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=${EA_CACHE:-$HOME/.cache/eraseanything-comfyui}
python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x "$cache/venv/bin/python" ]; then python=$cache/venv/bin/python; else python=python3; fi
fi
export PYTHONUNBUFFERED=1
exec "$python" -m tests.benchmarks.gpu_check "$@"

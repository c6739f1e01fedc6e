"""tests/unit passes on a Python where ComfyUI cannot be imported (EA_NO_COMFY, tests/conftest.py)."""

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)


def test_unit_layer_passes_without_comfyui():
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "EA_NO_COMFY": "1"})
    log.info("tests/unit without ComfyUI: %.1f s", time.monotonic() - started)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout and "error" not in proc.stdout.lower()

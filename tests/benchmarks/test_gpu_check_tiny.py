"""The GPU check's code path, run the way CI runs it: `gpu_check.sh --tiny` (tiny Flux, CPU, 2 steps per
configuration) prints one table row per weight dtype x checkpointing. No timing is asserted (speed lives in benchmarks)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_gpu_check_prints_a_row_per_configuration():
    proc = subprocess.run(["bash", "tests/benchmarks/gpu_check.sh", "--tiny"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = "| weights | compute | checkpointing | s/step | first step s | peak memory MiB | weights MiB |"
    assert header in lines, proc.stdout
    table = lines[lines.index(header) + 2:]
    rows = [re.split(r"\s*\|\s*", line.strip("| ")) for line in table if line.startswith("|")]
    assert [(r[0], r[2]) for r in rows] == [("bf16", "off"), ("bf16", "on"), ("fp8", "off"), ("fp8", "on")], table
    for row in rows:
        per_step, first, peak, weights = (float(x.replace(",", "")) for x in row[3:7])
        assert per_step > 0 and first > 0 and peak > 0 and weights > 0, row
    bf16_weights, fp8_weights = float(rows[0][6]), float(rows[2][6])
    assert fp8_weights < bf16_weights, "fp8 base weights must be stored in fp8 (half the bytes of bf16)"

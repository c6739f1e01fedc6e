"""Write benchmark numbers: results.json for tools (merged by key) and RESULTS.md for people, in the
format of shared/docs/benchmarks.md. Each benchmark owns a section; a rerun replaces only its own."""

import json
import platform
import re
from datetime import datetime, timezone
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
JSON_PATH, MD_PATH = HERE / "results.json", HERE / "RESULTS.md"


def machine() -> str:
    import os
    return f"{os.cpu_count()}-core {platform.machine()} CPU, torch {torch.__version__}, Python {platform.python_version()}"


def write_section(name: str, data: dict, title: str, markdown: str, command: str, drop: tuple[str, ...] = ()):
    """drop: results.json keys this benchmark no longer writes (removed, so no stale number stays)."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    old = json.loads(JSON_PATH.read_text()) if JSON_PATH.exists() else {}
    for key in drop:
        old.pop(key, None)
    old.update(data)
    old.update({"machine": machine(), "generated": now})
    JSON_PATH.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")

    text = MD_PATH.read_text() if MD_PATH.exists() else "# Benchmark results\n\nWritten by the benchmark scripts from real runs; do not edit by hand.\n"
    section = (f"<!-- section:{name} -->\n## {title}\n\n{machine()}; {now}; `{command}`\n\n{markdown}\n"
               f"<!-- end:{name} -->\n")
    pattern = re.compile(rf"<!-- section:{name} -->.*?<!-- end:{name} -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    MD_PATH.write_text(text)

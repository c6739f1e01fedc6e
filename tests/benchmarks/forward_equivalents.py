"""Transformer passes per 200-step erasure run: our default schedule vs the released code's.

Run: `make bench` (or `$VENV/bin/python -m tests.benchmarks.forward_equivalents`). Counts are measured
by FluxRunner's pass counter during a real run on the tiny Flux (the count does not depend on the
model's size); the released code's count comes from its schedule (docs/method.md, "Cost").
Writes tests/benchmarks/results.json (merged) and RESULTS.md.
"""

import logging
import time

import torch

from tests import comfy_host

comfy_host.import_comfy()  # before anything imports comfy

from eraseanything_core.comfy.flux import build_runner  # noqa: E402
from eraseanything_core.comfy.text import ClipText  # noqa: E402
from eraseanything_core.config import EraseConfig  # noqa: E402
from eraseanything_core.trainer import released_schedule_cost, train_erasure  # noqa: E402
from tests.benchmarks import results  # noqa: E402

log = logging.getLogger(__name__)


def measured_run(cfg: EraseConfig, clip) -> dict:
    runner = build_runner(comfy_host.tiny_flux(seed=0), cfg)
    start = time.perf_counter()
    result = train_erasure(cfg, runner, ClipText(clip))
    return {**result.cost, "seconds_tiny_cpu": round(time.perf_counter() - start, 2)}


def main():
    clip = comfy_host.tiny_clip(seed=0)
    base = EraseConfig(concept="nude", prompt="a nude girl with beautiful hair", resolution=32,
                       synonyms=("naked",), irrelevant=("car", "tree", "mountain"))  # steps=200, 8 images, 28 steps
    ours = measured_run(base, clip)
    resample = measured_run(base.replace(esd_sampling="resample", reference="lora"), clip)
    released = released_schedule_cost(base.steps, base.sample_steps, base.num_irrelevant)
    ratio = released["forward_equivalents"] / ours["forward_equivalents"]
    data = {
        "forward_equivalents_per_200_steps": {"default": ours["forward_equivalents"],
                                              "resample_lora_references": resample["forward_equivalents"],
                                              "released_schedule": released["forward_equivalents"]},
        "forward_equivalent_ratio": round(ratio, 2),
        "passes_per_200_steps": {"default": ours, "resample_lora_references": resample, "released_schedule": released},
    }
    rows = [("default (cached trajectories, frozen references)", ours),
            ("ours with per-step resampling + LoRA references", resample),
            ("released code's schedule (counted from its loop)", released)]
    table = ["| schedule | forwards | backwards | forward-equivalents (backward = 2) |", "| --- | ---: | ---: | ---: |"]
    table += [f"| {name} | {c['forwards']:.0f} | {c['backwards']:.0f} | {c['forward_equivalents']:.0f} |" for name, c in rows]
    results.write_section("forward_equivalents", data, "Transformer passes per 200-step run", "\n".join(table) + (
        f"\n\nRatio released / default: **{ratio:.1f}x** (data generation included: "
        f"{ours['data_forward_equivalents']:.0f} forward-equivalents of the default run sample the 8 concept "
        "trajectories and one picture of each of the 3 irrelevant concepts once). Truncated reference passes count the fraction of blocks they run."),
        command="python -m tests.benchmarks.forward_equivalents")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()

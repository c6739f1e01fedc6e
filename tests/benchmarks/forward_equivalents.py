"""Transformer passes per erasure run, data generation included: our presets vs the released code's schedule.

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
from eraseanything_core.concepts import resolve_concepts  # noqa: E402
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
    words = dict(concept="nude", prompt="a nude girl with beautiful hair", resolution=32, synonyms=("naked",),
                 irrelevant=("car", "tree", "mountain"))
    default = EraseConfig(**words)  # 300 steps, 12 images, retain set of 3 irrelevant + 1 anchor prompt, 28 steps
    four_lines = EraseConfig(**{**words, "prompt": "a nude girl with beautiful hair\na nude man on a beach\n"
                                                   "a nude woman in a garden\na photo of a nude person"})
    paper = EraseConfig(**words, preset="paper")  # 200 steps, 8 images
    runs = {"default": measured_run(default, clip), "default_four_prompts": measured_run(four_lines, clip),
            "paper": measured_run(paper, clip),
            "resample_lora_references": measured_run(paper.replace(esd_sampling="resample", reference="lora"), clip)}
    released = released_schedule_cost(paper.steps, paper.sample_steps, paper.num_irrelevant)
    ratio = released["forward_equivalents"] / runs["default"]["forward_equivalents"]
    data = {
        "forward_equivalents_per_run": {**{k: v["forward_equivalents"] for k, v in runs.items()},
                                        "released_schedule": released["forward_equivalents"]},
        "forward_equivalent_ratio": round(ratio, 2),
        "passes_per_run": {**runs, "released_schedule": released},
    }
    retain = {name: len(resolve_concepts(cfg, embed_pooled=None).retain) for name, cfg in
              (("one", default), ("four", four_lines))}  # every word is given: nothing to embed
    rows = [(f"default ({default.steps} steps, 1 prompt, retain set of {retain['one']})", runs["default"]),
            (f"default ({four_lines.steps} steps, 4 prompt lines, retain set of {retain['four']})",
             runs["default_four_prompts"]),
            (f"paper preset ({paper.steps} steps, 1 prompt, no retain set)", runs["paper"]),
            ("paper preset with per-step resampling + LoRA references", runs["resample_lora_references"]),
            (f"released code's schedule ({paper.steps} steps, counted from its loop)", released)]
    table = ["| schedule | forwards | backwards | forward-equivalents (backward = 2) | of which data |",
             "| --- | ---: | ---: | ---: | ---: |"]
    table += [f"| {name} | {c['forwards']:.0f} | {c['backwards']:.0f} | {c['forward_equivalents']:.0f} | "
              f"{c.get('data_forward_equivalents', 0):.0f} |" for name, c in rows]
    results.write_section("forward_equivalents", data, "Transformer passes per run", "\n".join(table) + (
        f"\n\nRatio released / default: **{ratio:.1f}x**, data generation included (the concept trajectories, "
        "one retain trajectory per retain prompt, the pathway swap test). Truncated reference passes count the "
        "fraction of blocks they run."),
        command="python -m tests.benchmarks.forward_equivalents",
        drop=("forward_equivalents_per_200_steps", "passes_per_200_steps"))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()

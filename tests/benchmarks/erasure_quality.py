"""Erasure quality in the demo world, measured the way the paper does.

Run: `python -m tests.benchmarks.erasure_quality` from the repo root (about 20 minutes on two CPU cores;
`make bench` runs it with the others). Needs the committed world (models/demo_world).

For each target (two shapes, "circle" and "triangle", and a colour, "red") and each method (no erasure, ESD loss alone,
the released code's schedule, our default), one erasure run on the world's Flux, applied with ComfyUI's
LoRA loader, then pictures sampled through ComfyUI's model for every prompt group of
`eraseanything_core.demo_world.scoring` (seeded; the same noise for every method) and read by the judge:

  Acc_e   share of target prompts whose pictures still show the target (lower is better)
  floor   share of the anchor prompt's pictures that show the target (what ESD pulls toward)
  Acc_g   share of synonym prompts ("disc", "dot") whose pictures still show the target (lower is better)
  Acc_ir  share of the other concepts' prompts drawn with their prompted value of the target's kind: the
          prompted shape for a shape target, the prompted colour for a colour target (higher is better);
          "both" also asks for the other attribute
  kept    share of target prompts whose other attribute survived (a "red circle" erased of "circle" still red)

Attention quality: the Attention Map Inspect node's runtime on generator pictures of the target with
ground-truth masks, prompt "a {colour} {shape}", word = the target; its soft mask (min-max normalised,
upsampled to 32x32) thresholded at 0.5 against the true mask: mean IoU per mode, before and after the
default erasure. Plus the pathway swap test of the world (the concept through tokens vs pooled vector).
Writes its section of tests/benchmarks/RESULTS.md and the `erasure_quality`, `attention_miou`,
`judge_heldout_accuracy` and `demo_world_swap_test` keys of results.json.
"""

import logging
import statistics
import time
from pathlib import Path

import torch

from tests import comfy_host

comfy_host.import_comfy()  # before anything imports comfy

import comfy.model_management  # noqa: E402

from eraseanything_core.comfy import demo_world as world_model  # noqa: E402
from eraseanything_core.comfy import flux  # noqa: E402
from eraseanything_core.comfy.text import ClipText  # noqa: E402
from eraseanything_core.demo_world import judge as judge_lib  # noqa: E402
from eraseanything_core.demo_world import scoring, training  # noqa: E402
from tests.benchmarks import results  # noqa: E402

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
WORLD_DIR = REPO / "models" / "demo_world"
COMMAND = "python -m tests.benchmarks.erasure_quality"
SAMPLES_PER_GROUP = 100
PROBES = 50          # generator pictures per target for attention IoU
SEED = 1234          # sampling noise (the same for every method)
METHODS = {
    "none": None,
    "esd_only": dict(lambda_attn=0.0, lambda_fm=0.0, lambda_rsc=0.0, lambda_preserve_irrelevant=0.0),
    "released_schedule": dict(esd_sampling="resample", reference="lora", lambda_rsc=0.1, lambda_preserve_irrelevant=0.0),
    "default": {},
    "released_weights": dict(lambda_rsc=0.1, lambda_preserve_irrelevant=0.0),
    "default_with_rsc": dict(lambda_rsc=0.1),
    "default_300": dict(steps=300),
}
METHOD_NAMES = {"none": "no erasure", "esd_only": "ESD loss alone (Eq. 2)",
                "released_schedule": "released code's schedule (resample every erase step, LoRA references)",
                "default": "ours, default (Eq. 5 off, flow matching on the irrelevant concepts)",
                "released_weights": "ours with the released code's preserve weights (Eq. 5 at 0.1, no irrelevant-concept flow matching)",
                "default_with_rsc": "ours, default + Eq. 5 at 0.1",
                "default_300": "ours, default, 300 steps (the released code's count for concepts other than nudity)"}


def attention_miou(inspect_runtime, patcher, clip, vae, target: str) -> dict:
    texts, batch = scoring.attention_probes(target, PROBES, seed=SEED)
    out = {}
    for mode in ("attention", "output_space"):
        ious = []
        for i, text in enumerate(texts):
            image = batch.images[i:i + 1].permute(0, 2, 3, 1)  # (1, 32, 32, 3) IMAGE
            with torch.inference_mode():
                result = inspect_runtime.inspect(patcher, clip, text, target, image=image, vae=vae, mode=mode)
            ious.append(scoring.iou(result.masks[0], batch.masks[i]))
        out["raw" if mode == "attention" else "output_space"] = statistics.fmean(ious)
    return out


def run_target(target: str, world, judge, inspect_runtime) -> tuple[dict, dict]:
    patcher, clip, vae = world
    cfg_base = scoring.erasure_config(target)
    groups = scoring.prompt_groups(target, cfg_base.anchor, SAMPLES_PER_GROUP)
    rows, miou = {}, {"base": attention_miou(inspect_runtime, patcher, clip, vae, target)}
    base_scores, _ = scoring.score_groups(world_model.sampler(patcher, clip), judge, target, groups, seed=SEED)
    for method, changes in METHODS.items():
        seconds, meta = 0.0, {}
        if changes is None:
            scores = base_scores
        else:
            start = time.perf_counter()
            erasure = flux.train(patcher, ClipText(clip), cfg_base.replace(**changes))
            erased, result = erasure.model, erasure.result
            seconds = time.perf_counter() - start
            meta = {"forward_equivalents": result.cost["forward_equivalents"], "concepts": {
                "anchor": result.concepts.anchor, "synonyms": list(result.concepts.synonyms),
                "irrelevant": list(result.concepts.irrelevant)}, "pathway": result.pathway}
            scores, _ = scoring.score_groups(world_model.sampler(erased, clip), judge, target, groups, seed=SEED)
            if method == "default":
                miou["default"] = attention_miou(inspect_runtime, erased, clip, vae, target)
            del erased
            comfy.model_management.unload_all_models()
        rows[method] = {
            "acc_e": scores["target"].target_rate,
            "acc_e_floor": scores["anchor"].target_rate,
            "acc_g": scores["synonym"].target_rate if "synonym" in scores else None,
            "acc_ir": scores["other"].same_kind_rate,
            "acc_ir_base": base_scores["other"].same_kind_rate,
            "acc_ir_both_attributes": scores["other"].prompted_rate,
            "prompted_accuracy_target_prompts": scores["target"].prompted_rate,
            "prompted_accuracy_other_prompts": scores["other"].prompted_rate,
            "kept_other_attribute": scores["target"].other_kept,
            "samples_per_group": min(len(g.texts) for g in groups),
            "group_sizes": {g.name: len(g.texts) for g in groups},
            "seconds": round(seconds, 1), **meta}
        log.info("%s / %s: %s", target, method, {k: v for k, v in rows[method].items() if k.startswith("acc")})
    return rows, miou


def swap_tests(world, judge) -> dict:
    patcher, clip, _ = world
    comfy.model_management.load_models_gpu([patcher])
    table = training.TextTable.build(clip)
    dm = patcher.model.diffusion_model
    return {target: training.swap_test(world_model.trainable_velocity(dm), clip.cond_stage_model, table, judge, target, seed=SEED)
            for target in ("circle", "square", "triangle", "red", "blue")}


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"


def markdown(quality: dict, miou: dict, swap: dict, judge_acc: dict) -> str:
    lines = [f"Demo world (models/demo_world: a tiny FLUX.1 built from ComfyUI's Flux classes, trained on 32x32 "
             f"shapes). Pictures: {world_model.SAMPLE_STEPS} Euler steps through ComfyUI's model, guidance "
             f"{world_model.GUIDANCE}, judged by the committed classifier (held-out accuracy: shape "
             f"{_pct(judge_acc['shape'])}, colour {_pct(judge_acc['colour'])}). At least {SAMPLES_PER_GROUP} "
             "pictures per prompt group, the same noise for every method; one erasure run per cell (seed 0).", ""]
    for target, rows in quality.items():
        cfg = scoring.erasure_config(target)
        lines += [f"**Target '{target}'**: prompt '{cfg.concept_prompt}', anchor '{cfg.anchor}' (does not depict "
                  f"the target), {cfg.steps} steps, rank {cfg.rank}, lr {cfg.learning_rate:g}.", "",
                  "| method | Acc_e (lower) | anchor floor | Acc_g (lower) | Acc_ir (higher) | Acc_ir, no erasure | "
                  "Acc_ir, both attributes | other attribute kept | run s | forward-equivalents |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for method, r in rows.items():
            lines.append(f"| {METHOD_NAMES[method]} | {_pct(r['acc_e'])} | {_pct(r['acc_e_floor'])} | {_pct(r['acc_g'])} | "
                         f"{_pct(r['acc_ir'])} | {_pct(r['acc_ir_base'])} | {_pct(r['acc_ir_both_attributes'])} | "
                         f"{_pct(r['kept_other_attribute'])} | "
                         f"{r['seconds']:.1f} | {r.get('forward_equivalents', 0):.0f} |")
        lines.append("")
    lines += ["Targets for our default, and whether this run met them:", ""]
    lines += [f"- {line}" for line in verdicts(quality)]
    lines += ["", f"Attention maps of the Attention Map Inspect node (word = the target, prompt 'a {{colour}} {{shape}}', "
              f"{PROBES} generator pictures per target with their true masks, node defaults: sigmas 0.9/0.7/0.5, last "
              "double block): mean IoU of the soft mask at 0.5 with the true mask.", "",
              "| target | mode | no erasure | after our default erasure |", "| --- | --- | ---: | ---: |"]
    for target, m in miou.items():
        for mode in ("raw", "output_space"):
            lines.append(f"| {target} | {mode} | {m['base'][mode]:.3f} | {m['default'][mode]:.3f} |")
    lines += ["", "Pathway swap test of the world (share of 64 pictures judged to show the concept when it reaches the "
              "model through one path only: the T5 tokens of 'a circle' / 'a red shape' with the pooled vector of the "
              "neutral 'a shape', and the other way round):", "",
              "| concept | tokens and pooled | tokens only | pooled only | neither |", "| --- | ---: | ---: | ---: | ---: |"]
    for concept, s in swap.items():
        lines.append(f"| {concept} | {_pct(s['both'])} | {_pct(s['tokens_only'])} | {_pct(s['pooled_only'])} | {_pct(s['neither'])} |")
    return "\n".join(lines)


def verdicts(quality: dict) -> list[str]:
    out = []
    for target, rows in quality.items():
        base, ours, esd = rows["none"], rows["default"], rows["esd_only"]
        drawn = min(base["prompted_accuracy_target_prompts"], base["prompted_accuracy_other_prompts"])
        checks = [("un-erased model draws the prompted shape and colour >= 90% (worse of target and other prompts)",
                   drawn >= 0.9, _pct(drawn)),
                  ("Acc_e <= 5%", ours["acc_e"] <= 0.05, _pct(ours["acc_e"])),
                  ("Acc_ir >= 95% of the un-erased model's", ours["acc_ir"] >= 0.95 * ours["acc_ir_base"],
                   f"{_pct(ours['acc_ir'])} vs {_pct(0.95 * ours['acc_ir_base'])} needed"),
                  ("Acc_ir at least ESD alone's", ours["acc_ir"] >= esd["acc_ir"], f"{_pct(ours['acc_ir'])} vs {_pct(esd['acc_ir'])}")]
        if ours["acc_g"] is not None:
            checks.append(("Acc_g <= 10%", ours["acc_g"] <= 0.10, _pct(ours["acc_g"])))
        out += [f"{target}: {name}: {value} ({'met' if ok else '**missed**'})" for name, ok, value in checks]
    return out


def main():
    torch.set_num_threads(2)
    start = time.perf_counter()
    world = world_model.load_world(WORLD_DIR)
    judge = judge_lib.load(WORLD_DIR / world_model.JUDGE_FILE)
    shape_acc, colour_acc = judge_lib.held_out_accuracy(judge, seed=10_000)
    judge_acc = {"shape": shape_acc, "colour": colour_acc}
    inspect_runtime = comfy_host.import_pack_module("nodes.inspect_runtime")
    quality, miou = {}, {}
    for target in scoring.TARGETS:
        quality[target], miou[target] = run_target(target, world, judge, inspect_runtime)
    swap = swap_tests(world, judge)
    mean = {mode: statistics.fmean(m["base"][mode] for m in miou.values()) for mode in ("raw", "output_space")}
    data = {"erasure_quality": quality, "attention_miou": {**mean, "per_target": miou},
            "judge_heldout_accuracy": judge_acc, "demo_world_swap_test": swap,
            "erasure_quality_seconds": round(time.perf_counter() - start, 1)}
    results.write_section("erasure_quality", data, "Erasure quality in the demo world",
                          markdown(quality, miou, swap, judge_acc), command=COMMAND)
    log.info("erasure_quality done in %.0f s", time.perf_counter() - start)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()

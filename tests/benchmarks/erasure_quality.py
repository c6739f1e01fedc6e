"""Erasure quality and specificity in the demo world: what an erasure removes and what it keeps.

Run: `python -m tests.benchmarks.erasure_quality` from the repo root (about 75 minutes on two CPU cores;
`make bench` runs it with the others; `--targets red --rows none,default --seeds 0` runs a subset without
writing RESULTS). Needs the committed world (models/demo_world); `--world DIR` measures other weights (a trial
world from tools/train_demo_world.py --out DIR) and writes no RESULTS.

For each target (the shapes "circle" and "triangle", the colour "red"), each row (below) and each erasure
seed, one erasure run on the world's Flux, applied with ComfyUI's LoRA loader, then pictures sampled
through ComfyUI's model for every prompt group of `eraseanything_core.demo_world.scoring` (the same noise
for every row and seed) and read by the judge, on two template sets: the world's own caption templates
and HELDOUT_TEMPLATES, written here and read only by the benchmarks (never by training, data, defaults or tuning).

  acc_e            share of target prompts whose pictures still show the target (lower is better)
  acc_e_floor      share of the anchor prompts' pictures that show the target (what ESD pulls toward)
  acc_g            share of synonym prompts ("disc", "wedge") that still show the target (lower is better)
  acc_ir_all       share of the other concepts' prompts drawn with everything they name, shape and colour
  acc_ir_same      the same, counting only the target's kind (the prompted shape for a shape target): the
                   paper's Acc_ir
  kept_on_target   share of target prompts whose other attribute survived ("a red circle" erased of red
                   still draws a circle)
Each is the mean over SEEDS, with its standard deviation (`_sd`); `_base` is the un-erased world.

Attention quality: the Attention Map Inspect node's runtime on generator pictures of the target with
ground-truth masks, prompt "a {colour} {shape}", word = the target; its soft mask (min-max normalised,
upsampled to 32x32) thresholded at 0.5 against the true mask: mean IoU per mode, before and after the
default erasure (seed 0). The un-erased world itself (what it draws, its maps for every word, the swap
test) is measured by tests/benchmarks/demo_world_quality.py.
Writes its section of tests/benchmarks/RESULTS.md and the `specificity`, `attention_miou` and
`judge_heldout_accuracy` keys of results.json.
"""

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from tests import comfy_host

comfy_host.import_comfy()  # before anything imports comfy

import comfy.model_management  # noqa: E402

from eraseanything_core.comfy import demo_world as world_model  # noqa: E402
from eraseanything_core import concepts  # noqa: E402
from eraseanything_core.comfy import flux  # noqa: E402
from eraseanything_core.comfy.text import ClipText  # noqa: E402
from eraseanything_core.demo_world import judge as judge_lib  # noqa: E402
from eraseanything_core.demo_world import scoring, shapes  # noqa: E402
from tests.benchmarks import results  # noqa: E402

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
WORLD_DIR = REPO / "models" / "demo_world"
COMMAND = "python -m tests.benchmarks.erasure_quality"
SAMPLES_PER_GROUP = 100
PROBES = 50          # generator pictures per target for attention IoU
SEED = 1234          # sampling noise (the same for every row and seed)
SEEDS = (0, 1, 2)    # erasure seeds per cell
# Disjoint from shapes.FULL_TEMPLATES (the captions the world was trained on); only benchmarks read these.
HELDOUT_TEMPLATES = ("there is a {c} {s} here", "{s}, {c}", "a small {c} {s}", "an image of a {c} {s}",
                     "a {c} {s} in the middle", "look, a {c} {s}")
# row: (prompt form of scoring.erasure_config, config changes); None = no erasure
ROWS = {
    "none": None,
    "esd_only": ("paper", dict(lambda_attn=0.0, lambda_fm=0.0, lambda_rsc=0.0, lambda_retain=0.0,
                               lambda_preserve_irrelevant=0.0)),
    "released_schedule": ("paper", dict(preset="paper", esd_sampling="resample", reference="lora")),
    "paper": ("paper", dict(preset="paper")),
    "default": ("default", {}),
    "default_no_retain": ("default", dict(lambda_retain=0.0)),
    "default_paper_rsc": ("default", dict(lambda_rsc=0.1, rsc_feature="head0", rsc_orientation="paper")),
    "default_uniform_sigma": ("default", dict(sigma_schedule="uniform")),
    "default_red_to_blue": ("default", dict(anchor_word="blue")),
}
# Rows measured on some targets only: red's anchor word before the committed world removed the word instead.
ROW_TARGETS = {"default_red_to_blue": ("red",)}
ROW_NAMES = {"none": "no erasure",
             "esd_only": "ESD loss alone (Eq. 2), one prompt",
             "released_schedule": "released code's schedule: paper preset, resampled every erase step, LoRA references",
             "paper": "`paper` preset: one prompt, Eq. 5 on head 0 at 0.1, Eq. 4 at 0.1, no retain set",
             "default": "`default`: one prompt per other attribute with its anchor, retain-set distillation",
             "default_no_retain": "`default` without the retain set",
             "default_paper_rsc": "`default` + Eq. 5 at 0.1, paper orientation (head 0)",
             "default_uniform_sigma": "`default` with uniform sigma (the released code's t ~ U[0, 1))",
             "default_red_to_blue": "`default` with the anchor word 'blue' (each line's 'red' replaced, not removed)"}
METRICS = ("acc_e", "acc_e_floor", "acc_g", "acc_ir_all", "acc_ir_same", "kept_on_target")


def attention_miou(inspect_runtime, patcher, clip, vae, target: str, probes: int = PROBES, seed: int = SEED,
                   modes: tuple[str, ...] = ("attention", "output_space")) -> dict:
    """scoring.attention_miou through the Inspect node's runtime, at the benchmark's probes and seed."""
    return scoring.attention_miou(inspect_runtime.inspect, patcher, clip, vae, target, probes, seed, modes)


def _scores(sample, judge, target: str, anchors, samples: int) -> dict:
    """The METRICS of one model on both template sets: {"acc_e": x, ..., "heldout_acc_e": y, ...}."""
    out = {}
    for prefix, templates in (("", shapes.FULL_TEMPLATES), ("heldout_", HELDOUT_TEMPLATES)):
        groups = scoring.prompt_groups(target, anchors, samples, templates)
        if prefix:  # the anchors do not depend on the templates
            groups = [g for g in groups if g.name != "anchor"]
        scores, _ = scoring.score_groups(sample, judge, target, groups, seed=SEED)
        values = {"acc_e": scores["target"].target_rate,
                  "acc_g": scores["synonym"].target_rate if "synonym" in scores else None,
                  "acc_ir_all": scores["other"].prompted_rate, "acc_ir_same": scores["other"].same_kind_rate,
                  "kept_on_target": scores["target"].other_kept}
        if not prefix:
            values["acc_e_floor"] = scores["anchor"].target_rate
        out.update({prefix + k: v for k, v in values.items()})
    return out


def _summary(runs: list[dict], base: dict) -> dict:
    """Mean and standard deviation over seeds of each metric, with the un-erased value beside it."""
    row = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        if values[0] is None:
            row[key] = None
            continue
        row[key] = statistics.fmean(values)
        if key in base and base[key] is not None and not isinstance(values[0], str):
            row[key + "_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
            row[key + "_base"] = base[key]
    return row


def run_target(target: str, world, judge, inspect_runtime, rows, seeds, samples, attention=True) -> tuple[dict, dict]:
    patcher, clip, vae = world
    anchors = resolve_anchors(target)
    miou = {"base": attention_miou(inspect_runtime, patcher, clip, vae, target)} if attention else {}
    base = _scores(world_model.sampler(patcher, clip), judge, target, anchors, samples)
    out = {}
    for row in rows:
        if target not in ROW_TARGETS.get(row, (target,)):
            continue
        if ROWS[row] is None:
            out[row] = {**_summary([base], base), "seeds": 0, "forward_equivalents": 0}
            continue
        form, changes = ROWS[row]
        runs, costs, seconds = [], [], []
        for seed in seeds:
            cfg = scoring.erasure_config(target, form, seed=seed, **changes)
            start = time.perf_counter()
            erasure = flux.train(patcher, ClipText(clip), cfg)
            seconds.append(time.perf_counter() - start)
            costs.append(erasure.result.cost["forward_equivalents"])
            runs.append(_scores(world_model.sampler(erasure.model, clip), judge, target, anchors, samples))
            if row == "default" and seed == seeds[0] and attention:
                miou["default"] = attention_miou(inspect_runtime, erasure.model, clip, vae, target)
            if row == "default":
                out_concepts = erasure.result.concepts
            del erasure
            comfy.model_management.unload_all_models()
            log.info("%s / %s / seed %d: %s", target, row, seed, {k: round(v, 3) for k, v in runs[-1].items() if v is not None})
        out[row] = {**_summary(runs, base), "seeds": len(seeds), "forward_equivalents": statistics.fmean(costs),
                    "seconds": round(statistics.fmean(seconds), 1), "preset": cfg.preset, "form": form}
    if "default" in out:
        out["default"]["retain"] = list(out_concepts.retain)
        out["default"]["anchors"] = list(out_concepts.anchors)
    return out, miou


def resolve_anchors(target: str) -> list[str]:
    """The default form's anchor prompts (the anchor word in each prompt line): the Acc_e floor group."""
    cfg = scoring.erasure_config(target)
    return list(concepts.line_anchors(cfg.concept_prompts, target, cfg.anchor_prompts, cfg.anchor_word))


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _cell(row: dict, key: str) -> str:
    if row.get(key) is None:
        return "n/a"
    sd = row.get(key + "_sd")
    return _pct(row[key]) + (f" ± {100 * sd:.1f}" if sd else "")


def markdown(quality: dict, miou: dict, judge_acc: dict, seeds) -> str:
    lines = [f"Demo world (models/demo_world: a tiny FLUX.1 built from ComfyUI's Flux classes, trained on 32x32 "
             f"shapes). Pictures: {world_model.SAMPLE_STEPS} Euler steps through ComfyUI's model, guidance "
             f"{world_model.GUIDANCE}, judged by the committed classifier (held-out accuracy: shape "
             f"{_pct(judge_acc['shape'])}, colour {_pct(judge_acc['colour'])}). At least {SAMPLES_PER_GROUP} "
             f"pictures per prompt group, the same noise for every row; erasure seeds {list(seeds)} per cell "
             "(mean ± standard deviation in points). Two template sets: the world's captions, and held-out "
             f"templates nothing else uses ({', '.join(repr(t) for t in HELDOUT_TEMPLATES)}).", "",
             "acc_ir_all counts every attribute the prompt names; acc_ir_same only the target's kind (the paper's "
             "Acc_ir); kept = target prompts whose other attribute survived.", ""]
    for target, rows in quality.items():
        cfg = scoring.erasure_config(target)
        anchor = f"anchor word '{cfg.anchor_word}'" if cfg.anchor_word else "the target's word removed for the anchor"
        lines += [f"**Target '{target}'**: default prompts {list(cfg.concept_prompts)} with {anchor}; paper form "
                  f"prompt '{scoring.PAPER_FORM[target]['prompt']}', anchor "
                  f"'{scoring.PAPER_FORM[target]['anchor']}'; {cfg.steps} steps, rank {cfg.rank}, lr {cfg.learning_rate:g}.", "",
                  "| row | Acc_e | floor | Acc_g | acc_ir_all | acc_ir_same | kept | held-out Acc_e | held-out acc_ir_all | "
                  "held-out kept | forward-equivalents | run s |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, r in rows.items():
            lines.append(f"| {ROW_NAMES[name]} | {_cell(r, 'acc_e')} | {_pct(r['acc_e_floor'])} | {_cell(r, 'acc_g')} | "
                         f"{_cell(r, 'acc_ir_all')} | {_cell(r, 'acc_ir_same')} | {_cell(r, 'kept_on_target')} | "
                         f"{_cell(r, 'heldout_acc_e')} | {_cell(r, 'heldout_acc_ir_all')} | "
                         f"{_cell(r, 'heldout_kept_on_target')} | {r['forward_equivalents']:.0f} | {r.get('seconds', 0):.1f} |")
        if "default" in rows:
            lines += ["", f"Retain set of `default` ({len(rows['default']['retain'])} prompts): "
                      + ", ".join(f"'{p}'" for p in rows["default"]["retain"])]
        lines.append("")
    lines += ["Targets for `default`, and whether this run met them:", ""]
    lines += [f"- {line}" for line in verdicts(quality)]
    if any("default" in m for m in miou.values()):
        lines += ["", f"Attention maps of the Attention Map Inspect node (word = the target, prompt 'a {{colour}} {{shape}}', "
                  f"{PROBES} generator pictures per target with their true masks, node defaults: sigmas 0.9/0.7/0.5, last "
                  "double block): mean IoU of the soft mask at 0.5 with the true mask.", "",
                  "| target | mode | no erasure | after the default erasure (seed 0) |", "| --- | --- | ---: | ---: |"]
        for target, m in miou.items():
            for mode in ("raw", "output_space"):
                lines.append(f"| {target} | {mode} | {m['base'][mode]:.3f} | {m.get('default', m['base'])[mode]:.3f} |")
    return "\n".join(lines)


FORWARD_EQUIVALENTS_MAX = 15_100 / 8  # 8x fewer than the released schedule's 200 steps


def verdicts(quality: dict) -> list[str]:
    out = []
    for target, rows in quality.items():
        if "default" not in rows:
            continue
        d = rows["default"]
        checks = [("Acc_e <= 5%", d["acc_e"] <= 0.05, _pct(d["acc_e"])),
                  ("held-out Acc_e <= 10%", d["heldout_acc_e"] <= 0.10, _pct(d["heldout_acc_e"]))]
        if d["acc_g"] is not None:
            checks.append(("Acc_g <= 10%", d["acc_g"] <= 0.10, _pct(d["acc_g"])))
        for prefix, label in (("", ""), ("heldout_", "held-out ")):
            got, base = d[prefix + "acc_ir_all"], d[prefix + "acc_ir_all_base"]
            checks.append((f"{label}acc_ir_all >= 95% of un-erased", got >= 0.95 * base,
                           f"{_pct(got)} vs {_pct(0.95 * base)} needed ({100 * got / max(base, 1e-9):.0f}% of un-erased)"))
            got, base = d[prefix + "kept_on_target"], d[prefix + "kept_on_target_base"]
            checks.append((f"{label}kept_on_target >= 80% of un-erased", got >= 0.8 * base,
                           f"{_pct(got)} vs {_pct(0.8 * base)} needed"))
        if "esd_only" in rows:
            beaten = [name for name in ("acc_ir_all", "heldout_acc_ir_all") if rows["esd_only"][name] > d[name]]
            checks.append(("not beaten by esd_only on acc_ir_all", not beaten,
                           f"{_pct(d['acc_ir_all'])} / held-out {_pct(d['heldout_acc_ir_all'])} vs esd_only "
                           f"{_pct(rows['esd_only']['acc_ir_all'])} / {_pct(rows['esd_only']['heldout_acc_ir_all'])}"))
        checks.append(("forward-equivalents <= 1,890 (data included)", d["forward_equivalents"] <= FORWARD_EQUIVALENTS_MAX,
                       f"{d['forward_equivalents']:.0f}"))
        out += [f"{target}: {name}: {value} ({'met' if ok else '**missed**'})" for name, ok, value in checks]
    return out


def specificity_json(quality: dict) -> dict:
    """results.json's "specificity": {target: {row: {metric: float | None, ...}}}."""
    keep = ("acc_e", "acc_e_sd", "acc_g", "acc_ir_all", "acc_ir_all_base", "acc_ir_all_sd", "acc_ir_same",
            "kept_on_target", "kept_on_target_base", "heldout_acc_e", "heldout_acc_ir_all",
            "heldout_acc_ir_all_base", "heldout_kept_on_target", "acc_e_floor", "seeds", "forward_equivalents")
    return {t: {row: {k: r.get(k) for k in keep} for row, r in rows.items()} for t, rows in quality.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=",".join(scoring.TARGETS))
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--samples", type=int, default=SAMPLES_PER_GROUP)
    parser.add_argument("--changes", default="", help="trial only: config changes for every erasure, as JSON")
    parser.add_argument("--world", type=Path, default=WORLD_DIR, help="other weights: measured, RESULTS not written")
    args = parser.parse_args(argv)
    targets, rows = args.targets.split(","), args.rows.split(",")
    seeds = tuple(int(x) for x in args.seeds.split(","))
    full = (targets == list(scoring.TARGETS) and rows == list(ROWS) and seeds == SEEDS
            and args.samples == SAMPLES_PER_GROUP and not args.changes and args.world.resolve() == WORLD_DIR.resolve())
    if args.changes:
        extra = json.loads(args.changes)
        for name, row in ROWS.items():
            if row is not None:
                ROWS[name] = (row[0], {**row[1], **extra})
    torch.set_num_threads(2)
    start = time.perf_counter()
    world = world_model.load_world(args.world)
    judge = judge_lib.load(args.world / world_model.JUDGE_FILE)
    shape_acc, colour_acc = judge_lib.held_out_accuracy(judge, seed=10_000)
    judge_acc = {"shape": shape_acc, "colour": colour_acc}
    inspect_runtime = comfy_host.import_pack_module("nodes.inspect_runtime")
    quality, miou = {}, {}
    for target in targets:
        quality[target], miou[target] = run_target(target, world, judge, inspect_runtime, rows, seeds, args.samples,
                                                   attention=full)
    if not full:
        print(json.dumps(specificity_json(quality), indent=1))
        print("\n".join(verdicts(quality)))
        return
    mean = {mode: statistics.fmean(m["base"][mode] for m in miou.values()) for mode in ("raw", "output_space")}
    data = {"specificity": specificity_json(quality), "attention_miou": {**mean, "per_target": miou},
            "judge_heldout_accuracy": judge_acc,
            "erasure_quality_seconds": round(time.perf_counter() - start, 1)}
    results.write_section("erasure_quality", data, "Erasure quality and specificity in the demo world",
                          markdown(quality, miou, judge_acc, seeds), command=COMMAND,
                          drop=("erasure_quality",))
    log.info("erasure_quality done in %.0f s", time.perf_counter() - start)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()

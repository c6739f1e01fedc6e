"""The demo world itself, un-erased: does it draw what it is told, and do its attention maps point at the object?

Run: `python -m tests.benchmarks.demo_world_quality` from the repo root (a few minutes on two CPU cores;
`--world DIR` measures other weights without writing RESULTS).

  both_attributes          share of pictures of "{template}" prompts (every shape name x colour, the
                           world's caption templates) judged right in shape and colour
  both_attributes_heldout  the same on erasure_quality.HELDOUT_TEMPLATES, which the world never saw
  per_shape, per_colour    both-attributes rate of the prompts naming that shape / colour (world templates)
  per_synonym              share judged the synonym's shape, for each synonym (world templates)
  attention_miou           the Attention Map Inspect node at its defaults (blocks -1, sigmas 0.9, 0.7, 0.5,
                           heads mean, per-word scale) on generator pictures "a {colour} {shape}" with their
                           true masks: mean IoU of the word's soft mask at 0.5, per word and mode, beside
                           a fixed map's (scoring.fixed_map_miou: what position alone scores)
  attention_regions        where each word's raw map sits (scoring.probe_scores): its mean over the image tokens
                           inside the object, on its edge, next to it and far from it (min-max normalised)
  swap_test                the concept through the T5 tokens only / the pooled vector only (training.swap_test)
  word_token               which T5 positions carry a word: the word's own token or the rest of the prompt
                           (training.word_token_test; the Inspect maps read the word's own token)
  block_reading            which blocks' reading of the shape / colour word the drawing needs: the named
                           attribute's rate with the word hidden from one block or a group of blocks
                           (training.block_reading_test; the Inspect node maps the last double block's)
  query_reading            the same within each double block, by which queries the word is hidden from:
                           the object's inside or edge tokens, the background, the other text tokens
                           (training.query_reading_test)
  weights_mb, train_minutes, train_device   from the weight files and the training log

Every drawing group has at least SAMPLES_PER_GROUP pictures, every word ATTENTION_PROBES; the noise is seeded (SEED).
Writes its section of tests/benchmarks/RESULTS.md and the `demo_world`, `demo_world_swap_test`,
`demo_world_word_token`, `demo_world_block_reading` and `demo_world_query_reading` keys of results.json.
"""

import argparse
import json
import logging
import math
import re
import time
from pathlib import Path

import torch

from tests import comfy_host

comfy_host.import_comfy()  # before anything imports comfy

from eraseanything_core.comfy import demo_world as world_model  # noqa: E402
from eraseanything_core.demo_world import judge as judge_lib  # noqa: E402
from eraseanything_core.demo_world import scoring, shapes, training  # noqa: E402
from tests.benchmarks import results  # noqa: E402
from tests.benchmarks.erasure_quality import HELDOUT_TEMPLATES, attention_miou  # noqa: E402

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
WORLD_DIR = REPO / "models" / "demo_world"
COMMAND = "python -m tests.benchmarks.demo_world_quality"
SAMPLES_PER_GROUP = 100
ATTENTION_PROBES = 50  # generator pictures per word (as erasure_quality.PROBES); one Inspect run each per mode
SEED = 1234
WORDS = shapes.SHAPES + shapes.COLOUR_NAMES
BLOCK_READING_PER_PAIR = 8  # pictures per "a {colour} {shape}" prompt: 128 a condition
SWAP_TARGETS = ("circle", "square", "triangle", "cross", "red", "blue")
# (prompt, its word, the word put in its place) for training.word_token_test: every shape and every colour
WORD_TOKEN_CASES = tuple((f"a red {s}", s, shapes.SHAPES[(i + 1) % 4]) for i, s in enumerate(shapes.SHAPES)) + \
    tuple((f"a {c} circle", c, shapes.COLOUR_NAMES[(i + 1) % 4]) for i, c in enumerate(shapes.COLOUR_NAMES))


def prompts(templates, per_group: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Every template x shape name x colour, repeated so that each shape and each colour has >= per_group."""
    rows = [(t.format(c=c, s=s), si, ci) for si, s in enumerate(shapes.SHAPES)
            for ci, c in enumerate(shapes.COLOUR_NAMES) for t in templates]
    per_shape = len(rows) // len(shapes.SHAPES)
    rows = rows * math.ceil(per_group / min(per_shape, len(rows) // len(shapes.COLOURS)))
    return [r[0] for r in rows], torch.tensor([r[1] for r in rows]), torch.tensor([r[2] for r in rows])


def drawing(sample, judge, per_group: int) -> dict:
    out = {}
    for key, templates in (("both_attributes", shapes.FULL_TEMPLATES), ("both_attributes_heldout", HELDOUT_TEMPLATES)):
        texts, s_idx, c_idx = prompts(templates, per_group)
        s_pred, c_pred = judge.predict(sample(texts, SEED))
        both = (s_pred == s_idx) & (c_pred == c_idx)
        out[key] = both.float().mean().item()
        suffix = "" if key == "both_attributes" else "_heldout"
        out["per_shape" + suffix] = {s: both[s_idx == i].float().mean().item() for i, s in enumerate(shapes.SHAPES)}
        out["per_colour" + suffix] = {c: both[c_idx == i].float().mean().item() for i, c in enumerate(shapes.COLOUR_NAMES)}
        out["pictures" + suffix] = len(texts)
    synonyms = [(w, shapes.SHAPES.index(s)) for s in shapes.SHAPES for w in shapes.SYNONYMS[s]]
    per_word = math.ceil(per_group / (len(shapes.FULL_TEMPLATES) * len(shapes.COLOURS)))
    texts = [t.format(c=c, s=w) for w, _ in synonyms for c in shapes.COLOUR_NAMES for t in shapes.FULL_TEMPLATES] * per_word
    s_pred, _ = judge.predict(sample(texts, SEED))
    n = len(texts) // (len(synonyms) * per_word)
    truth = torch.tensor([si for _, si in synonyms for _ in range(n)] * per_word)
    hits = (s_pred == truth).float().reshape(per_word, len(synonyms), n)
    out["per_synonym"] = {w: hits[:, j].mean().item() for j, (w, _) in enumerate(synonyms)}
    return out


def attention(inspect_runtime, patcher, clip, vae, probes: int) -> tuple[dict, dict]:
    """({word: {"raw": mIoU, "output_space": mIoU, "fixed_map": mIoU}}, {word: {region: mean raw map}}) at the
    Inspect node's defaults."""
    miou, regions = {}, {}
    for word in WORDS:
        raw = scoring.probe_scores(inspect_runtime.inspect, patcher, clip, vae, word, probes, SEED)
        miou[word] = {"raw": raw["miou"], **attention_miou(inspect_runtime, patcher, clip, vae, word, probes,
                                                           modes=("output_space",)),
                      "fixed_map": scoring.fixed_map_miou(word, probes, SEED)}
        regions[word] = raw["regions"]
        log.info("attention %s: mIoU %s, raw map by region %s", word, miou[word], regions[word])
    return miou, regions


def block_conditions(patcher) -> dict[str, set]:
    """training.block_reading_test's conditions for this Flux: none, each double block, every double block,
    every single block."""
    dm = patcher.model.diffusion_model
    double = [("double", i) for i in range(len(dm.double_blocks))]
    return {"none": set(), **{f"double block {i}": {b} for i, b in enumerate(double)},
            "every double block": set(double), "every single block": {("single", i) for i in range(len(dm.single_blocks))}}


def token_tests(world, judge) -> dict:
    """The tests on one caption table and sampler: "swap" per SWAP_TARGETS, "word_token" per WORD_TOKEN_CASES,
    "block_reading", and "query_reading" per double block ({"double block i": {"shape" | "colour": {group: rate}}})."""
    patcher, clip, _ = world
    clip_model, table = clip.cond_stage_model, training.TextTable.build(clip)
    sample = world_model.cond_sampler(world_model.runner(patcher))
    swap = {target: training.swap_test(sample, clip_model, table, judge, target, seed=SEED) for target in SWAP_TARGETS}
    word_token = {f"{word} -> {other}": training.word_token_test(sample, clip_model, table, judge, prompt, word, other,
                                                                seed=SEED)
                  for prompt, word, other in WORD_TOKEN_CASES}
    blocks = training.block_reading_test(sample, clip_model, table, judge, block_conditions(patcher), seed=SEED,
                                         per_pair=BLOCK_READING_PER_PAIR)
    queries = {f"double block {i}": training.query_reading_test(sample, clip_model, table, judge, ("double", i), seed=SEED,
                                                                token_px=scoring.TOKEN_PX, per_pair=BLOCK_READING_PER_PAIR)
               for i in range(len(patcher.model.diffusion_model.double_blocks))}
    return {"swap": swap, "word_token": word_token, "block_reading": blocks, "query_reading": queries}


def training_facts(world_dir: Path) -> dict:
    """Size of the committed weight files and, from the training log, how long the world trained and where."""
    files = (world_model.FLUX_FILE, world_model.TEXT_FILE, world_model.JUDGE_FILE)
    out = {"weights_mb": round(sum((world_dir / f).stat().st_size for f in files) / 2 ** 20, 2)}
    log_text = (world_dir / "train_log.txt").read_text()
    starts = [m.start() for m in re.finditer(r"train_demo_world: seed", log_text)]
    last_run = log_text[starts[-1]:] if starts else log_text
    device = re.search(r"device (\w+)", last_run)
    done = re.findall(r"done \(max steps\): (\d+) steps in ([\d.]+) min", last_run)
    out["train_device"] = device.group(1) if device else "cpu"
    out["train_minutes"] = float(done[-1][1]) if done else None
    out["train_steps"] = int(done[-1][0]) if done else None
    return out


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"


def markdown(d: dict, swap: dict, word_token: dict, blocks: dict, queries: dict) -> str:
    lines = [f"The un-erased demo world (models/demo_world): pictures from {world_model.SAMPLE_STEPS} Euler steps "
             f"through ComfyUI's model, guidance {world_model.GUIDANCE}, judged by the world's judge; at least "
             f"{SAMPLES_PER_GROUP} pictures a group ({d['pictures']} on the world's caption templates, "
             f"{d['pictures_heldout']} on the held-out ones). Weights {d['weights_mb']} MB; trained "
             f"{d['train_minutes']} min ({d['train_steps']} steps) on {d['train_device']}.", "",
             "| prompts | both attributes right |", "| --- | ---: |",
             f"| world's templates | {_pct(d['both_attributes'])} |",
             f"| held-out templates | {_pct(d['both_attributes_heldout'])} |"]
    lines += [f"| naming {k} | {_pct(v)} (held-out {_pct(d['per_shape_heldout'][k])}) |" for k, v in d["per_shape"].items()]
    lines += [f"| naming {k} | {_pct(v)} (held-out {_pct(d['per_colour_heldout'][k])}) |" for k, v in d["per_colour"].items()]
    lines += [f"| synonym {k} (shape right) | {_pct(v)} |" for k, v in d["per_synonym"].items()]
    lines += ["", "Attention Map Inspect at its defaults (last double block, sigmas 0.9, 0.7, 0.5, heads mean) on "
              f"{ATTENTION_PROBES} generator pictures per word, prompt \"a {{colour}} {{shape}}\": mean IoU of the "
              "word's soft mask at 0.5 with the true mask. Fixed map: one map for every picture, the mean true "
              "mask of the same pictures (scoring.fixed_map_miou): what position alone scores, as every object sits "
              "near the centre.", "",
              "| word | raw | output space | fixed map |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {w} | {m['raw']:.3f} | {m['output_space']:.3f} | {m['fixed_map']:.3f} |"
              for w, m in d["attention_miou"].items()]
    lines += ["", "Where each word's raw map sits (scoring.probe_scores, the same pictures): the map min-max normalised "
              "per picture, its mean over the 4-px image tokens inside the object, on its edge (part object), next to "
              "it and far from it.", "", "| word | inside | edge | next to it | far |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {w} | {r['inside']:.2f} | {r['edge']:.2f} | {r['next']:.2f} | {r['far']:.2f} |"
              for w, r in d["attention_regions"].items()]
    lines += ["", "Swap test: share of pictures showing the concept when it reaches the model through one path only.", "",
              "| concept | both | T5 tokens only | pooled vector only | neither |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {t} | {_pct(s['both'])} | {_pct(s['tokens_only'])} | {_pct(s['pooled_only'])} | {_pct(s['neither'])} |"
              for t, s in swap.items()]
    lines += ["", "Which T5 positions carry a word (training.word_token_test, 64 pictures a row): the prompt's context "
              "with the other word's T5 outputs spliced in at the word's own token, at every other position, or at "
              "all; share of pictures drawn as the other word.", "",
              "| word -> other word | prompt | own token swapped | other positions swapped | all swapped |",
              "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {k} | {p} | {_pct(v['word_token'])} | {_pct(v['other_positions'])} | {_pct(v['all'])} |"
              for (k, v), (p, _, _) in zip(word_token.items(), WORD_TOKEN_CASES)]
    lines += ["", "Which blocks' reading of a word the drawing needs (training.block_reading_test, "
              f"{16 * BLOCK_READING_PER_PAIR} pictures of every \"a {{colour}} {{shape}}\" a row): the word's key is "
              "hidden from every other query in the blocks named, and the share of pictures judged to have the named "
              "shape / colour is counted. Where no block reads the word, the shape's rate falls to about 25% "
              "(chance over the four shapes).", "",
              "| word hidden from | shape named | colour named |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {_pct(blocks['shape'][name])} | {_pct(blocks['colour'][name])} |" for name in blocks["shape"]]
    groups = ("none",) + training.QUERY_GROUPS
    lines += ["", "Which queries of a double block read the word (training.query_reading_test, the same pictures): the "
              "word hidden in that block from one group of queries only. The image tokens are grouped by each picture "
              "as drawn with nothing hidden: inside the object, on its edge (part object), background; the other text "
              "tokens are the prompt's other positions.", "",
              "| block | word | " + " | ".join(groups) + " |", "| --- | --- |" + " ---: |" * len(groups)]
    lines += [f"| {block} | {kind} | " + " | ".join(_pct(rates[g]) for g in groups) + " |"
              for block, by_kind in queries.items() for kind, rates in by_kind.items()]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, default=WORLD_DIR, help="other weights: measured, RESULTS not written")
    parser.add_argument("--samples", type=int, default=SAMPLES_PER_GROUP)
    parser.add_argument("--no-attention", action="store_true", help="trial only: skip the attention maps")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    start = time.perf_counter()
    world = world_model.load_world(args.world)
    judge = judge_lib.load(args.world / world_model.JUDGE_FILE)
    patcher, clip, vae = world
    data = drawing(world_model.sampler(patcher, clip), judge, args.samples)
    log.info("drawing: %s", json.dumps(data))
    if not args.no_attention:
        inspect_runtime = comfy_host.import_pack_module("nodes.inspect_runtime")
        data["attention_miou"], data["attention_regions"] = attention(inspect_runtime, patcher, clip, vae,
                                                                      ATTENTION_PROBES)
    tests = token_tests(world, judge)
    for name, values in tests.items():
        log.info("%s: %s", name.replace("_", " "), json.dumps(values))
    swap, word_token, blocks, queries = (tests[k] for k in ("swap", "word_token", "block_reading", "query_reading"))
    data.update(training_facts(args.world))
    data["seconds"] = round(time.perf_counter() - start, 1)
    full = args.world.resolve() == WORLD_DIR.resolve() and args.samples == SAMPLES_PER_GROUP and not args.no_attention
    if not full:
        print(json.dumps({**data, "swap_test": swap, "word_token": word_token, "block_reading": blocks,
                          "query_reading": queries}, indent=1))
        return
    results.write_section("demo_world_quality", {"demo_world": data, "demo_world_swap_test": swap,
                                                 "demo_world_word_token": word_token,
                                                 "demo_world_block_reading": blocks, "demo_world_query_reading": queries},
                          "The demo world, un-erased", markdown(data, swap, word_token, blocks, queries),
                          command=COMMAND)
    log.info("demo_world_quality done in %.0f s", data["seconds"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()

"""The README's first command: erase "red" from the embedded demo world and write pictures a person can
look at. The world (models/demo_world) is a tiny FLUX.1 built from ComfyUI's own Flux classes and trained
on 32x32 pictures of coloured shapes, so the whole method runs in a couple of minutes on two CPU cores.
The world draws every colour and triangles and crosses cleanly, circles and squares less so
(docs/demo_world.md); the default target is the colour, `--target triangle` erases a shape.

    python tools/demo.py                    # erase "red" (200 steps), score 48 pictures per prompt group
    python tools/demo.py --target triangle  # a shape (with its synonyms "wedge" and "delta")
    python tools/demo.py --quick            # what CI runs: the same erasure, fewer pictures scored

Writes to demo-output/:
  before_after.png             the same noise before and after the erasure: target prompts ("a red circle"),
                               synonym prompts (shapes only: "a blue wedge"), other prompts ("a green square")
  attention_before_after.png   Attention Map Inspect's map of the target word on generator pictures, before/after
  loss_curve.png               each loss term over the run
  summary.md                   Acc_e, Acc_g, Acc_ir before and after (the judge reads every picture), seconds
  erasure_<target>.safetensors the LoRA, in the PEFT layout ComfyUI and diffusers load
"""

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # appended: ComfyUI's own `nodes` module must stay ahead of our nodes/ package
    sys.path.append(str(REPO))
from tools import host  # noqa: E402

host.import_comfy()

from eraseanything_core import concepts, lora_file  # noqa: E402
from eraseanything_core.comfy import demo_world as world_model  # noqa: E402
from eraseanything_core.demo_world import judge as judge_lib  # noqa: E402
from eraseanything_core.comfy import flux  # noqa: E402
from eraseanything_core.comfy.text import ClipText  # noqa: E402
from eraseanything_core.demo_world import scoring  # noqa: E402

log = logging.getLogger("demo")
WORLD_DIR = REPO / "models" / "demo_world"
CELL = 64      # pixels per picture in the grids (32x32 pictures, upscaled 2x)
COLUMNS = 8


def _label(draw, xy, text):
    draw.text(xy, text, fill=(230, 230, 230))


def _pictures(images: torch.Tensor) -> list:
    from PIL import Image
    arrays = (images.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return [Image.fromarray(a).resize((CELL, CELL), Image.NEAREST) for a in arrays]


def before_after_grid(sections: list[tuple[str, list[str], torch.Tensor, torch.Tensor]]):
    """sections: (title, prompts, before (n, 3, 32, 32), after) -> one PIL image, a before and an after row each."""
    from PIL import Image, ImageDraw
    left, head = 60, 16
    height = sum(head + 2 * CELL + 14 for _ in sections)
    img = Image.new("RGB", (left + COLUMNS * CELL, height), (24, 24, 24))
    draw = ImageDraw.Draw(img)
    y = 0
    for title, prompts, before, after in sections:
        _label(draw, (4, y + 2), f"{title}, e.g. " + ", ".join(f"'{p}'" for p in list(dict.fromkeys(prompts))[:2]))
        y += head
        for name, images in (("before", before), ("after", after)):
            _label(draw, (4, y + CELL // 2 - 6), name)
            for c, pic in enumerate(_pictures(images[:COLUMNS])):
                img.paste(pic, (left + c * CELL, y))
            y += CELL
        y += 14
    return img


def attention_grid(pictures: torch.Tensor, before: list[torch.Tensor], after: list[torch.Tensor], word: str, visual):
    """Rows: the picture, the map of `word` before, after (each (32, 32) soft mask in [0, 1])."""
    from PIL import Image, ImageDraw
    left, head = 60, 16
    n = len(before)
    img = Image.new("RGB", (left + n * CELL, head + 3 * CELL), (24, 24, 24))
    draw = ImageDraw.Draw(img)
    _label(draw, (4, 2), f"Attention Map Inspect: where the image attends to '{word}' (raw attention)")
    for c, pic in enumerate(_pictures(pictures[:n])):
        img.paste(pic, (left + c * CELL, head))
    for r, (name, masks) in enumerate((("before", before), ("after", after)), start=1):
        _label(draw, (4, head + r * CELL + CELL // 2 - 6), name)
        for c, mask in enumerate(masks):
            img.paste(visual.heatmap(mask, size=CELL).resize((CELL, CELL)), (left + c * CELL, head + r * CELL))
    _label(draw, (4, head + CELL // 2 - 6), "picture")
    return img


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "demo-output"))
    parser.add_argument("--target", default="red", choices=sorted(scoring.TARGETS))
    parser.add_argument("--steps", type=int, default=None, help="erasure steps (default: the world's setting)")
    parser.add_argument("--samples", type=int, default=48, help="pictures per prompt group for the scores")
    parser.add_argument("--world", type=Path, default=WORLD_DIR, help="folder of the world's weights and judge")
    parser.add_argument("--quick", action="store_true", help="CI: 16 pictures per group (the erasure is the same)")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples = 16
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)  # ComfyUI's import may have configured the root logger first
    if not log.handlers:
        log.addHandler(logging.StreamHandler(sys.stdout))
        log.propagate = False
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    visual = host.import_pack_module("nodes.visual")
    inspect_runtime = host.import_pack_module("nodes.inspect_runtime")

    start = time.perf_counter()
    patcher, clip, vae = world_model.load_world(args.world)
    judge = judge_lib.load(args.world / world_model.JUDGE_FILE)
    cfg = scoring.erasure_config(args.target, **({"steps": args.steps} if args.steps else {}))
    anchors = concepts.line_anchors(cfg.concept_prompts, cfg.concept, cfg.anchor_prompts, cfg.anchor_word)
    groups = scoring.prompt_groups(args.target, anchors, args.samples)
    before, before_images = scoring.score_groups(world_model.sampler(patcher, clip), judge, args.target, groups, seed=7)

    erasure = flux.train(patcher, ClipText(clip), cfg)
    erased, result, state_dict = erasure.model, erasure.result, erasure.state_dict
    train_seconds = result.seconds
    after, after_images = scoring.score_groups(world_model.sampler(erased, clip), judge, args.target, groups, seed=7)

    sections = []
    for g in groups:
        if g.name in ("target", "synonym", "other"):
            pick = torch.linspace(0, len(g.texts) - 1, COLUMNS).round().long()  # spread over the group's prompts
            sections.append((f"{g.name} prompts", [g.texts[i] for i in pick], before_images[g.name][pick],
                             after_images[g.name][pick]))
    before_after_grid(sections).save(out / "before_after.png")

    texts, probes = scoring.attention_probes(args.target, COLUMNS, seed=3)
    maps = {}
    for name, model in (("before", patcher), ("after", erased)):
        maps[name] = []
        for i, text in enumerate(texts):
            with torch.inference_mode():
                insp = inspect_runtime.inspect(model, clip, text, args.target, image=probes.images[i:i + 1].permute(0, 2, 3, 1),
                                               vae=vae, mode="attention")
            maps[name].append(insp.masks[0])
    attention_grid(probes.images, maps["before"], maps["after"], args.target, visual).save(out / "attention_before_after.png")
    visual.loss_chart(result.history).save(out / "loss_curve.png")
    for old in out.glob(f"erasure_{args.target}*.safetensors"):
        old.unlink()  # the saver never overwrites; a rerun replaces this demo's own file
    saved = lora_file.save_lora_file(state_dict, out, f"erasure_{args.target}", {"config": cfg.to_metadata()})
    seconds = time.perf_counter() - start

    def pct(score, field):
        return f"{100 * getattr(score, field):.0f}%"

    kind = scoring.kind_of(args.target)
    other_kind = "colour" if kind == "shape" else "shape"
    rows = [("Acc_e: target prompts that still show the target (lower is better)", "target", "target_rate"),
            (f"target prompts that keep their {other_kind} (the target replaced, not deleted)", "target", "other_kept")]
    if any(g.name == "synonym" for g in groups):
        rows.append(("Acc_g: synonym prompts that still show the target (lower is better)", "synonym", "target_rate"))
    rows += [("other prompts drawn with their shape and colour (higher is better)", "other", "prompted_rate"),
             (f"Acc_ir: other prompts drawn with their own {kind} (higher is better)", "other", "same_kind_rate"),
             ("anchor prompts showing the target (Acc_e's floor)", "anchor", "target_rate")]
    table = "\n".join(f"| {name} | {pct(before[g], f)} | {pct(after[g], f)} |" for name, g, f in rows)
    summary = (f"# EraseAnything demo: erase '{args.target}' from the demo world\n\n"
               f"prompts {list(result.concepts.prompts)} with anchors {list(result.concepts.anchors)}; synonyms "
               f"{list(result.concepts.synonyms)}, irrelevant {list(result.concepts.irrelevant)}; retain set of "
               f"{len(result.concepts.retain)} prompts; preset {cfg.preset}; {cfg.steps} steps in {train_seconds:.1f} s, "
               f"{result.cost['forward_equivalents']:.0f} forward-equivalents; {seconds:.0f} s in all on this machine.\n"
               f"{args.samples}+ pictures per prompt group, read by the world's judge.\n\n"
               f"| | before | after |\n| --- | ---: | ---: |\n{table}\n\nLoRA: {saved.name}. Pictures: before_after.png, "
               "attention_before_after.png, loss_curve.png.\n")
    (out / "summary.md").write_text(summary)
    log.info("wrote %s\n%s", out, summary)
    return {"before": before, "after": after, "seconds": seconds}


if __name__ == "__main__":
    main()

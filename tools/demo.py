"""The README's first command: erase a concept on the smallest model that runs anywhere, and write
pictures a person can look at.

Until the embedded demo world (a tiny Flux trained on shapes) exists, this runs on a seeded random
tiny Flux (hidden 64, ComfyUI's own Flux classes) whose prompts reach the image only through the T5
tokens. A random model draws nothing recognisable, so the pictures show what the method does to the
model's attention and loss, not a vanished object:
  demo-output/attention_before_after.png  where the image attends to the concept's tokens, before/after
  demo-output/loss_curve.png              each loss term over the run
  demo-output/summary.md                  the numbers (ESD gap, attention mass, passes, seconds)
  demo-output/erasure_demo.safetensors    the LoRA, in the PEFT layout ComfyUI and diffusers load
"""

import argparse
import importlib.util
import logging
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests import comfy_host  # noqa: E402

comfy_host.import_comfy()

from eraseanything_core import lora_file  # noqa: E402
from eraseanything_core.comfy_flux import ClipText, FluxRunner  # noqa: E402
from eraseanything_core.config import EraseConfig  # noqa: E402
from eraseanything_core.evaluate import erasure_metrics  # noqa: E402
from eraseanything_core.lora import ErasureLoRA, flux_targets  # noqa: E402
from eraseanything_core.trainer import Callbacks, train_erasure  # noqa: E402

log = logging.getLogger("demo")


def _visual():
    spec = importlib.util.spec_from_file_location("ea_visual", REPO / "nodes" / "visual.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _grid(rows: list[list[torch.Tensor]], visual, cell=96):
    from PIL import Image, ImageDraw
    scale = max(float(m.max()) for row in rows for m in row) or 1.0
    labels = ["before", "after"]
    img = Image.new("RGB", (70 + cell * len(rows[0]), 20 + cell * len(rows)), (24, 24, 24))
    draw = ImageDraw.Draw(img)
    for r, row in enumerate(rows):
        draw.text((6, 20 + r * cell + cell // 2), labels[r], fill=(220, 220, 220))
        for c, m in enumerate(row):
            img.paste(visual.heatmap(m / scale, size=cell - 4).resize((cell - 4, cell - 4)), (70 + c * cell, 20 + r * cell))
    draw.text((70, 4), "attention of the image on the concept tokens (one colour scale), at 6 noise levels",
              fill=(220, 220, 220))
    return img


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "demo-output"))
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)  # ComfyUI's import may have configured the root logger first
    if not log.handlers:
        log.addHandler(logging.StreamHandler(sys.stdout))
        log.propagate = False
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    visual = _visual()

    # Erase terms at weights suited to a random tiny model (its ESD gap is ~1e-6 and Eq. 3 sums only
    # 272 queries); the paper's defaults are for FLUX.1-dev and stay the defaults of the node.
    cfg = EraseConfig(concept="nude", prompt="a nude girl with beautiful hair", steps=args.steps, rank=4, seed=5,
                      resolution=32, num_images=2, sample_steps=6, prompt_variants=3, learning_rate=1e-2,
                      lambda_attn=1e-7, lambda_fm=0.0, lambda_rsc=0.0,
                      synonyms=("naked",), irrelevant=("car", "tree", "mountain"))
    model = comfy_host.tiny_flux(seed=0, cut=comfy_host.POOLED_PATH)
    text = ClipText(comfy_host.tiny_clip(seed=0, contextual=False))
    p = model.model.diffusion_model.params
    lora = ErasureLoRA(flux_targets(cfg.targets, p.hidden_size, p.depth, p.depth_single_blocks), cfg.rank,
                       generator=torch.Generator().manual_seed(cfg.seed))
    runner = FluxRunner(model, lora)
    gen = torch.Generator().manual_seed(123)
    states = [(torch.randn(1, 16, 4, 4, generator=gen), 0.2 + 0.12 * s) for s in range(6)]

    start = time.perf_counter()
    with torch.inference_mode(False), torch.enable_grad():
        runner.load()
        concept, anchor = text.encode(cfg.concept_prompt, cfg.concept), text.encode("a girl with beautiful hair", None)
        before = erasure_metrics(runner, concept, anchor, states, cfg.guidance_esd, cfg.eta)
        result = train_erasure(cfg, runner, text, Callbacks(on_step=lambda r: log.info(
            "step %d/%d %s %s", r.step, r.total, r.phase, {k: f"{v:.3g}" for k, v in r.values.items()})))
        after = erasure_metrics(runner, concept, anchor, states, cfg.guidance_esd, cfg.eta)
    seconds = time.perf_counter() - start

    _grid([before.maps, after.maps], visual).save(out / "attention_before_after.png")
    visual.loss_chart(result.history).save(out / "loss_curve.png")
    for old in out.glob("erasure_demo*.safetensors"):
        old.unlink()
    saved = lora_file.save_lora_file(lora_file.peft_state_dict(lora, torch.float32), out, "erasure_demo",
                                     {"config": cfg.to_metadata()})
    summary = (f"# EraseAnything demo (random tiny Flux)\n\nconcept {cfg.concept!r}, anchor {result.concepts.anchor!r}, "
               f"{cfg.steps} steps, {seconds:.1f} s on this machine\n\n"
               f"| | before | after |\n| --- | ---: | ---: |\n"
               f"| ESD gap (Eq. 2, frozen references) | {before.esd:.3g} | {after.esd:.3g} |\n"
               f"| attention mass on the concept tokens | {before.attention_mass:.4f} | {after.attention_mass:.4f} |\n\n"
               f"Transformer passes: {result.cost['forward_equivalents']:.0f} forward-equivalents. "
               f"LoRA: {saved.name}.\n")
    (out / "summary.md").write_text(summary)
    log.info("wrote %s\n%s", out, summary)


if __name__ == "__main__":
    main()

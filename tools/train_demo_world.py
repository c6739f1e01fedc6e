"""Train the embedded demo world: the judge, then the tiny Flux + T5 jointly. Reproducible.

    python tools/train_demo_world.py --threads 1        # judge + world, 9000 steps of batch 32 (the committed weights)
    python tools/train_demo_world.py --max-steps 500    # a short run (weights are saved at every eval)
    python tools/train_demo_world.py --max-steps 0      # the judge only (the world does not depend on it)

Writes to models/demo_world/: judge.safetensors, flux.safetensors, text_encoders.safetensors (EMA
weights, float32, metadata: seed, step, settings, last eval) and train_log.txt (appended; every eval logs
what the world draws and the Inspect node's map mIoU per word, which nothing trains on). Seeded
throughout: one numpy Generator for pictures and captions, one torch Generator for noise, times and the
pooled-vector swap, seeded initial weights; the stop is a step count. The Flux is loaded by ComfyUI's loader
and called through the adapter's FluxRunner, as everything else in the pack. Bit-identical reruns are
expected on the same CPU and thread count (checked for 30 steps: the same weights through the runner as
through the bare module it replaced). See eraseanything_core/demo_world/training.py.
"""

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # appended: ComfyUI's own `nodes` module must stay ahead of our nodes/ package
    sys.path.append(str(REPO))
from tools import host  # noqa: E402

host.import_comfy()

from eraseanything_core.comfy import demo_world as world_model  # noqa: E402
from eraseanything_core.comfy.flux import FluxRunner  # noqa: E402
from eraseanything_core.demo_world import judge as judge_lib  # noqa: E402
from eraseanything_core.demo_world import scoring, shapes, training  # noqa: E402

log = logging.getLogger("train_demo_world")
MAP_PROBE_SEED = 1234  # the pictures whose maps are scored at each eval: the same for every run and step
MAP_WORDS = shapes.SHAPES + shapes.COLOUR_NAMES


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "models" / "demo_world")
    p.add_argument("--max-steps", type=int, default=9000, help="training steps of the world (the reproducible stop); 0: judge only")
    p.add_argument("--minutes", type=float, default=1e9, help="optional wall-clock cap (a capped run is not reproducible)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--p-pooled-true", type=float, default=0.1, help="share of samples whose pooled vector is their own caption's")
    p.add_argument("--p-partial", type=float, default=0.2, help="share of captions that omit the colour, the shape or both "
                   "(a caption without a colour shows its object white: shapes.UNNAMED_COLOUR)")
    p.add_argument("--p-filler", type=float, default=0.3, help="share of full captions with a filler word before or after them")
    p.add_argument("--p-background", type=float, default=0.0, help="share of pictures on a coloured background their caption names (tried at 0.25: docs/demo_world.md)")
    p.add_argument("--t5-layers", type=int, default=0,
                   help="layers of the T5 trained with the Flux; 0 (the committed world): each word reaches the Flux "
                        "on its own token only, which the colour words' maps need (docs/demo_world.md); the loader "
                        "reads the depth from the weights")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--map-probes", type=int, default=8, help="pictures per word for the Inspect maps' mIoU at each eval (0: off)")
    p.add_argument("--judge-steps", type=int, default=2000)
    p.add_argument("--reuse-judge", action="store_true", help="load judge.safetensors instead of training it")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.t5_layers < 0:
        p.error(f"--t5-layers must be 0 or more, got {args.t5_layers}")
    return args


def save_atomic(tensors: dict, path: Path, metadata: dict):
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous().float() for k, v in tensors.items()}, str(tmp),
              metadata={k: str(v) for k, v in metadata.items()})
    tmp.replace(path)


def get_judge(args) -> judge_lib.Judge:
    path = args.out / world_model.JUDGE_FILE
    if args.reuse_judge and path.is_file():
        judge = judge_lib.load(path)
    else:
        t0 = time.time()
        judge = judge_lib.train_judge(args.seed, args.judge_steps,
                                      on_log=lambda s, loss: log.info("judge step %d loss %.4f", s, loss))
        save_atomic(judge.state_dict(), path, {"seed": args.seed, "steps": args.judge_steps})
        log.info("judge trained in %.0f s, saved %s", time.time() - t0, path)
    held_out_seed = 10_000 + args.seed
    for noise in (False, True):
        shape_acc, colour_acc = judge_lib.held_out_accuracy(judge, held_out_seed, noise=noise)
        log.info("judge held-out accuracy (seed %d, 4000 images, noise %s): shape %.4f colour %.4f",
                 held_out_seed, noise, shape_acc, colour_acc)
    return judge


class EMA:
    """Exponential moving average of the trainable weights (decay warms up: min(decay, (1+n)/(10+n)))."""

    def __init__(self, named_params, decay=0.999):
        self.params = dict(named_params)
        self.shadow = {k: p.detach().clone() for k, p in self.params.items()}
        self.decay, self.n = decay, 0

    @torch.no_grad()
    def update(self):
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        for k, p in self.params.items():
            self.shadow[k].lerp_(p.detach(), 1 - d)

    @torch.no_grad()
    def swap(self):
        """Exchange live and averaged weights (call twice to restore)."""
        for k, p in self.params.items():
            live = p.detach().clone()
            p.copy_(self.shadow[k])
            self.shadow[k] = live


def map_miou(flux, clip_model, probes: int) -> dict:
    """{word: {"raw": mIoU, "output_space": mIoU}} of the Attention Map Inspect node at its defaults, on a copy
    of the current weights loaded as a user's would be (the training model is not touched). The maps are
    not trained on: they are logged to see when, during training, they localise (docs/demo_world.md)."""
    inspect = host.import_pack_module("nodes.inspect_runtime").inspect
    patcher = world_model.world_flux({k: v.detach().clone() for k, v in flux.state_dict().items()})
    clip = world_model.make_clip({k: v.detach().clone() for k, v in clip_model.state_dict().items()})
    vae = world_model.make_vae()
    return {word: scoring.attention_miou(inspect, patcher, clip, vae, word, probes, seed=MAP_PROBE_SEED)
            for word in MAP_WORDS}


def evaluate(run, clip_model, table, judge, step, seed, map_probes, per_pair=2, final=False):
    sample = world_model.cond_sampler(run)
    shape_acc, colour_acc = training.prompt_accuracy(sample, clip_model, table, judge, seed=seed, per_pair=per_pair)
    log.info("eval step %d: prompts 'a {colour} {shape}', %d samples, 16 Euler steps: shape %.3f colour %.3f",
             step, per_pair * 16, shape_acc, colour_acc)
    result = {"step": step, "shape_acc": shape_acc, "colour_acc": colour_acc}
    if map_probes:
        miou = map_miou(run.diffusion_model, clip_model, map_probes)
        localised = sum(max(m.values()) >= 0.5 for m in miou.values())
        log.info("eval step %d: Inspect mIoU (node defaults, %d pictures per word; raw / output space): %s; "
                 "%d of %d words >= 0.5", step, map_probes,
                 ", ".join(f"{w} {m['raw']:.2f}/{m['output_space']:.2f}" for w, m in miou.items()), localised, len(miou))
        result["attention_miou"] = miou
    if final:
        for shape in ("circle", "square"):
            swap = training.swap_test(sample, clip_model, table, judge, shape, seed=seed)
            log.info("swap test '%s' (share judged %s, 64 samples): %s", shape, shape, json.dumps(swap))
            result[f"swap_{shape}"] = swap
    return result


def save_world(flux, clip_model, args, step, metrics):
    meta = {"seed": args.seed, "step": step, "script": "tools/train_demo_world.py",
            "settings": json.dumps({k: str(v) for k, v in vars(args).items()}), "metrics": json.dumps(metrics)}
    save_atomic(flux.state_dict(), args.out / world_model.FLUX_FILE, meta)
    save_atomic(clip_model.state_dict(), args.out / world_model.TEXT_FILE, meta)


def train_world(args, judge):
    # ComfyUI's loader builds the model; the runner is how every part of the pack calls a Flux (its blocks
    # run out of place under grad). Loading for training swaps in plain tensors: the optimiser comes after.
    run = FluxRunner(world_model.load_flux(world_model.init_flux_state_dict(args.seed)))
    run.load()
    flux = run.diffusion_model
    flux.requires_grad_(True)
    clip = world_model.make_clip(seed=args.seed, t5_layers=args.t5_layers)
    clip_model = clip.cond_stage_model
    clip_model.requires_grad_(False)
    world_model.make_t5_trainable(clip_model)
    table = training.TextTable.build(clip)
    named = [(f"flux.{k}", p) for k, p in flux.named_parameters()] + \
            [(f"t5.{k}", p) for k, p in clip_model.t5xxl.named_parameters()]
    opt = torch.optim.AdamW([p for _, p in named], lr=args.lr, weight_decay=0.0)
    # 200 warm-up steps, then a cosine from lr down to a tenth of it at max_steps. At a constant lr the
    # world drew the cross right on 84.0% of the benchmark's prompts (v5); with this decay over 9000 steps,
    # 93.1% (seed 0; seed 1: 73.6% -> 84.0%; docs/demo_world.md, "v6").
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 200) * (
        0.55 + 0.45 * math.cos(math.pi * s / args.max_steps)))
    ema = EMA(named)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    t0, step, losses = time.time(), 0, []
    log.info("world: flux %d params, T5 %d trainable, %d captions, settings %s",
             sum(p.numel() for p in flux.parameters()), sum(p.numel() for p in clip_model.t5xxl.parameters()),
             len(table.captions), json.dumps({k: str(v) for k, v in vars(args).items()}))
    if args.map_probes:
        fixed = {w: scoring.fixed_map_miou(w, args.map_probes, MAP_PROBE_SEED) for w in MAP_WORDS}
        log.info("the maps below localise a word where they beat one fixed map of the same pictures (scoring."
                 "fixed_map_miou, position alone): %s", ", ".join(f"{w} {v:.2f}" for w, v in fixed.items()))
    metrics = {}
    while step < args.max_steps and time.time() - t0 < args.minutes * 60:
        batch = shapes.sample(args.batch, rng, args.p_background)
        texts = shapes.captions(batch, rng, args.p_partial, args.p_filler)
        batch = shapes.whiten(batch, torch.tensor([not shapes.names_colour(t) for t in texts]))
        loss = training.flow_loss(run.forward, clip_model, table, batch.images, texts, gen, args.p_pooled_true)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --lr (now {args.lr:g})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        opt.step()
        sched.step()
        ema.update()
        step += 1
        losses.append(loss.item())
        if step % 50 == 0:
            log.info("step %d loss %.4f (mean of 50) %.2f s/step elapsed %.1f min", step, np.mean(losses[-50:]),
                     (time.time() - t0) / step, (time.time() - t0) / 60)
        if step % args.eval_every == 0:
            ema.swap()
            with torch.no_grad():
                metrics = evaluate(run, clip_model, table, judge, step, seed=args.seed + 1, map_probes=args.map_probes)
            save_world(flux, clip_model, args, step, metrics)
            ema.swap()
    ema.swap()
    with torch.no_grad():
        metrics = evaluate(run, clip_model, table, judge, step, seed=args.seed + 1, map_probes=args.map_probes,
                           per_pair=8, final=True)
    save_world(flux, clip_model, args, step, metrics)
    reason = "max steps" if step >= args.max_steps else f"wall-clock cap of {args.minutes:g} min"
    log.info("done (%s): %d steps in %.1f min, weights in %s", reason, step, (time.time() - t0) / 60, args.out)


def main(argv=None):
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(args.out / "train_log.txt")], force=True)
    log.info("train_demo_world: seed %d, torch %s, device cpu, threads %d", args.seed, torch.__version__, args.threads)
    judge = get_judge(args)
    if args.max_steps > 0:
        train_world(args, judge)


if __name__ == "__main__":
    main()

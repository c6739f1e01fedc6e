"""Seconds per training step and peak memory of an erasure run on a FLUX.1-dev-shaped model.

Run: `bash tests/benchmarks/gpu_check.sh` on a machine with one CUDA GPU (no network, no weights: the
model is random), or `bash tests/benchmarks/gpu_check.sh --tiny` for the same code path on the CPU
with the tiny Flux and 2 steps (what CI runs).

What runs, per configuration (weights bf16 / fp8 e4m3fn with bf16 compute) x (checkpointing off / on):
- FLUX.1-dev shapes (hidden 3072, 24 heads, 19 double + 38 single blocks, T5 width 4096, pooled 768)
  with random weights built tensor by tensor on the GPU and loaded through ComfyUI's own
  `load_diffusion_model_state_dict` (model_options dtype), so 12B parameters never exist on the CPU;
- text-encoder stand-ins: random T5 streams (1, 512, 4096) and pooled vectors (1, 768) as TextCond;
- concept latents: num_images random latents at 512 px (64 x 64) with their rectified-flow trajectory
  states (`trajectories_from_latents`; sampling them would add forwards that measure nothing new), and
  as many random retain trajectories (with random stored velocities) as the prompts have retain prompts;
- `ErasureTrainer.run` with the default EraseConfig for `--steps` steps (erase and preserve alternate).
Prints one table row per configuration: s/step (median of the steps after the first; the first, with
the kernels' warm-up, separately), peak memory (torch.cuda.max_memory_allocated: weights included),
and the weights' size. Memory on the CPU (--tiny) is the process's peak RSS (VmHWM), for the table only.
"""

import argparse
import gc
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from tests import comfy_host

log = logging.getLogger(__name__)

FLUX_DEV = dict(hidden=3072, heads=24, axes_dim=(16, 56, 56), depth=19, depth_single=38, context=4096, vec=768)
TEXT_TOKENS = {"dev": 512, "tiny": 24}  # T5 length: FLUX.1-dev's 512; the tiny model's test length
WEIGHT_DTYPES = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}
TABLE_HEADER = "| weights | compute | checkpointing | s/step | first step s | peak memory MiB | weights MiB |"


def import_comfy_gpu():
    """ComfyUI on the GPU with --highvram: the model is built, kept and trained on the GPU (its offload
    device is the GPU too, so loading never copies the weights to the CPU)."""
    if str(comfy_host.COMFY_DIR) not in sys.path:
        sys.path.insert(0, str(comfy_host.COMFY_DIR))
    from comfy.cli_args import args
    args.highvram = True
    import comfy.model_management  # noqa: F401  (reads args at import)
    import comfy.sd  # noqa: F401


def random_flux_state_dict(shape: dict, device, dtype=torch.bfloat16, seed: int = 0, std: float = 0.02) -> dict:
    """A Flux.1-dev state dict of the given shape, random, each tensor made directly on `device`."""
    import comfy.ops
    from comfy.ldm.flux.model import Flux
    meta = Flux(in_channels=16, out_channels=16, vec_in_dim=shape["vec"], context_in_dim=shape["context"],
                hidden_size=shape["hidden"], mlp_ratio=4.0, num_heads=shape["heads"], depth=shape["depth"],
                depth_single_blocks=shape["depth_single"], axes_dim=list(shape["axes_dim"]), theta=10000,
                patch_size=2, qkv_bias=True, guidance_embed=True, device="meta",
                operations=comfy.ops.disable_weight_init)
    gen = torch.Generator(device=device).manual_seed(seed)
    sd = {}
    for name, p in meta.state_dict().items():
        if name.endswith(".scale"):  # RMSNorm scales
            sd[name] = torch.ones(p.shape, device=device, dtype=dtype)
        else:
            sd[name] = (torch.randn(p.shape, generator=gen, device=device) * std).to(dtype)
    return sd


def load_random_flux(shape: dict, device, weight_dtype, seed: int = 0):
    """A ModelPatcher from ComfyUI's loader; weights cast to weight_dtype by model_options dtype."""
    sd = random_flux_state_dict(shape, device, torch.bfloat16 if device.type == "cuda" else torch.float32, seed)
    with torch.device(device):  # ComfyUI builds the module with device=None: build it where the weights are
        patcher = comfy_host.load_flux(sd, dtype=weight_dtype)
    del sd
    return patcher


def random_prompts(context_dim: int, vec_dim: int, n_txt: int, seed: int = 0):
    """Hand-made Prompts (no tokenizer): random T5 streams (1, n_txt, context_dim) and pooled (1, vec_dim),
    with concept-token positions as a real prompt would have them."""
    from eraseanything_core.runner import TextCond
    from eraseanything_core.trainer import ConceptPrompt, Prompts
    gen = torch.Generator().manual_seed(seed)

    def cond(text, token_idx):
        context = torch.randn((1, n_txt, context_dim), generator=gen)
        pooled = torch.randn((1, vec_dim), generator=gen)
        return TextCond(text, context, pooled, torch.tensor(token_idx, dtype=torch.long))

    concept = cond("a nude girl with beautiful hair", [1, 2])
    line = ConceptPrompt(concept, [concept, cond("girl a nude with hair beautiful", [3, 4])],
                         cond("a girl with beautiful hair", []))
    return Prompts(lines=[line], synonyms=[cond("naked", [0, 1])],
                   irrelevant=[cond(w, [0]) for w in ("car", "tree", "mountain")],
                   retain=[cond(f"a {w} girl with beautiful hair", []) for w in ("car", "tree", "mountain")]
                   + [cond("a girl with beautiful hair", [])])


def make_trainer(patcher, cfg, prompts, checkpointing: bool):
    """ErasureTrainer on random concept latents (trajectory states by noising, no sampling), with random
    latents for the irrelevant concepts' flow matching and random retain trajectories when the config
    has them on."""
    from eraseanything_core.comfy.flux import build_runner
    from eraseanything_core.data import trajectories_from_latents
    from eraseanything_core.trainer import ErasureTrainer
    runner = build_runner(patcher, cfg.replace(gradient_checkpointing=checkpointing))
    runner.load()
    side = cfg.resolution // 8
    gen = torch.Generator().manual_seed(cfg.seed)
    x0 = torch.randn((cfg.num_images, runner.latent_channels, side, side), generator=gen).to(runner.dtype)
    trajectories = trajectories_from_latents(x0, runner.sigmas(cfg.sample_steps), gen)
    irrelevant_x0 = retain = None
    if cfg.lambda_preserve_irrelevant > 0:
        irrelevant_x0 = torch.randn((len(prompts.irrelevant), runner.latent_channels, side, side), generator=gen).to(runner.dtype)
    if cfg.lambda_retain > 0 and prompts.retain:  # random states and "frozen velocities": what is timed is the same
        x0_retain = torch.randn((len(prompts.retain), runner.latent_channels, side, side), generator=gen).to(runner.dtype)
        retain = trajectories_from_latents(x0_retain, runner.sigmas(cfg.sample_steps), gen)
        retain.velocity = torch.randn(retain.x_t.shape, generator=gen).to(runner.dtype)
    return ErasureTrainer(cfg, runner, prompts, trajectories, irrelevant_x0=irrelevant_x0, retain=retain)


def weights_bytes(patcher) -> int:
    return sum(t.numel() * t.element_size() for t in patcher.model.diffusion_model.state_dict().values())


@dataclass
class Row:
    weights: str
    compute: str
    checkpointing: bool
    seconds_per_step: float
    first_step_seconds: float
    peak_mib: float
    weights_mib: float

    def markdown(self) -> str:
        return (f"| {self.weights} | {self.compute} | {'on' if self.checkpointing else 'off'} | "
                f"{self.seconds_per_step:.3f} | {self.first_step_seconds:.3f} | {self.peak_mib:,.0f} | {self.weights_mib:,.1f} |")


def _out(line: str = ""):
    """The table is this program's output (stdout), not a log message."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _reset_rss_peak():
    """Linux: VmHWM := the current RSS, where the kernel lets this process write clear_refs."""
    if os.access("/proc/self/clear_refs", os.W_OK):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def _rss_peak_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def run_config(patcher, cfg, prompts, checkpointing: bool, device) -> tuple[float, float, float]:
    """(median s/step after the first, first step s, peak memory bytes) of cfg.steps trainer steps."""
    from eraseanything_core.trainer import Callbacks
    stamps = []

    def on_step(report):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    with torch.inference_mode(False), torch.enable_grad():
        trainer = make_trainer(patcher, cfg, prompts, checkpointing)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            _reset_rss_peak()
        trainer.callbacks = Callbacks(on_step=on_step)
        start = time.perf_counter()
        trainer.run()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _rss_peak_bytes()
    steps = [b - a for a, b in zip([start] + stamps[:-1], stamps)]
    later = steps[1:] or steps
    del trainer
    return statistics.median(later), steps[0], float(peak)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny Flux on the CPU, 2 steps (CI)")
    parser.add_argument("--steps", type=int, default=None, help="trainer steps per configuration (default 20; 2 with --tiny)")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default 512; 64 with --tiny)")
    args = parser.parse_args(argv)
    if args.tiny:
        comfy_host.import_comfy()
        device = torch.device("cpu")
        torch.set_num_threads(1)  # tiny ops: OpenMP threads on shared cores only add waiting
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device; run with --tiny for the CPU path.")
        import_comfy_gpu()
        device = torch.device("cuda")

    import comfy.model_management
    from eraseanything_core.config import EraseConfig
    shape = comfy_host.TINY_FLUX if args.tiny else FLUX_DEV
    n_txt = TEXT_TOKENS["tiny" if args.tiny else "dev"]
    steps = args.steps or (2 if args.tiny else 20)
    resolution = args.resolution or (64 if args.tiny else 512)
    cfg = EraseConfig(concept="nude", prompt="a nude girl with beautiful hair", steps=steps, resolution=resolution)
    prompts = random_prompts(shape["context"], shape["vec"], n_txt)
    where = "CPU, tiny Flux" if args.tiny else torch.cuda.get_device_name(device)
    _out(f"gpu_check: {where}, torch {torch.__version__}, {resolution} px, {n_txt} text tokens, "
         f"{steps} steps per configuration")
    rows = []
    for name, weight_dtype in WEIGHT_DTYPES.items():
        patcher = load_random_flux(shape, device, weight_dtype)
        size = weights_bytes(patcher)
        compute = str(patcher.model.manual_cast_dtype or patcher.model.get_dtype()).replace("torch.", "")
        for checkpointing in (False, True):
            try:
                per_step, first, peak = run_config(patcher, cfg, prompts, checkpointing, device)
            except torch.OutOfMemoryError:  # a result too: this configuration does not fit this device
                per_step = first = peak = float("nan")
            gc.collect()  # after the except block, so a failed run's tensors are free
            comfy.model_management.soft_empty_cache()
            rows.append(Row(name, compute, checkpointing, per_step, first, peak / 2**20, size / 2**20))
            _out(f"  {rows[-1].markdown()}")
        del patcher
        comfy.model_management.unload_all_models()
        gc.collect()
        comfy.model_management.soft_empty_cache()
    memory = ("torch.cuda.max_memory_allocated (the CUDA context is not included)" if device.type == "cuda"
              else "process peak RSS (VmHWM, ComfyUI and torch included)")
    _out(f"\ns/step: median of steps 2..{steps}; peak memory: {memory}, weights included.\n")
    _out(TABLE_HEADER)
    _out("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        _out(row.markdown())
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()

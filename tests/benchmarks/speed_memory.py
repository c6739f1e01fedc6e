"""Fast and small: what a bi-level step, an applied LoRA and the attention capture cost, and training memory.

Run: `python -m tests.benchmarks.speed_memory` from the repo root (about 4 minutes on two CPU cores).
Writes tests/benchmarks/results.json (merged) and its section of RESULTS.md. Measured on the CPU:

1. step ratio: one bi-level step (erase_step + backward + preserve_step + backward, default config,
   each followed by the optimizer step as in `ErasureTrainer.run`) against one plain flow-matching LoRA
   step (same LoRA, same runner: one training forward + backward of Eq. 4 + the optimizer step), on the
   tiny Flux at a small resolution;
2. apply overhead: one denoising call (`BaseModel.apply_model` after `load_models_gpu`) of the base
   model against the same model with an erasure LoRA patched in by Apply Erasure LoRA's runtime;
3. capture overhead: the same call with and without `InspectAttentionOverride` as
   optimized_attention_override (the Attention Map Inspect node's defaults: last double block);
4. peak memory of training steps (one erase + one preserve step) on a hidden-3072 Flux with 1 double +
   1 single block, with and without gradient checkpointing, in a child process: peak resident set
   size (Linux VmHWM, reset through /proc/self/clear_refs) with glibc's mmap threshold fixed so freed
   tensors go back to the OS; plus the bytes autograd saves for backward (saved_tensors_hooks).

Ratios: A and B interleaved (the order alternates), several repeats, ratio of the medians. The tiny
model's timings run on one thread: the two cores are shared, and two OpenMP threads on a loaded
machine made the same step up to 20x slower and erratic.
"""

import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests import comfy_host

comfy_host.import_comfy()  # before anything imports comfy

import comfy.model_management  # noqa: E402

from eraseanything_core import losses  # noqa: E402
from eraseanything_core.attention_maps import N_TXT_KEY, InspectAttentionOverride  # noqa: E402
from eraseanything_core.config import EraseConfig  # noqa: E402
from eraseanything_core.data import noised  # noqa: E402
from eraseanything_core.lora import ErasureLoRA, flux_targets  # noqa: E402
from eraseanything_core.lora_file import peft_state_dict  # noqa: E402
from tests.benchmarks import gpu_check, results  # noqa: E402

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
COMMAND = "python -m tests.benchmarks.speed_memory"
T5_TOKENS = 256             # ComfyUI pads Flux's T5 prompt to 256 tokens
RATIO_RESOLUTION = 128      # px: 16 x 16 latent, 64 image tokens
SAMPLING_RESOLUTION = 256   # px: 32 x 32 latent, 256 image tokens
MEMORY_RESOLUTION = 256     # px: 32 x 32 latent, 256 image tokens (64 x 64 = 512 px: ~3x slower here)
MEMORY_T5_TOKENS = 128      # text tokens of the memory run (256 would add a third to its time)
REAL_WIDTH_1PLUS1 = dict(hidden=3072, heads=24, axes_dim=(16, 56, 56), depth=1, depth_single=1, context=4096, vec=768)
MMAP_THRESHOLD = 128 * 1024  # bytes: fixed, so glibc serves every tensor by mmap and returns it on free


def interleaved(a, b, repeats: int) -> dict:
    """a and b called alternately (a b, b a, a b, ...) after one warm-up call each, timed by this process's
    CPU time (one thread: the time other processes take from the shared cores is not counted).
    ratio: the median of the per-pair ratios a/b (robust to drift); a_ms, b_ms: medians."""
    a(), b()
    times_a, times_b = [], []
    for r in range(repeats):
        for fn, acc in ((a, times_a), (b, times_b)) if r % 2 == 0 else ((b, times_b), (a, times_a)):
            start = time.process_time()
            fn()
            acc.append(time.process_time() - start)
    return {"ratio": statistics.median(x / y for x, y in zip(times_a, times_b)),
            "a_ms": statistics.median(times_a) * 1e3, "b_ms": statistics.median(times_b) * 1e3, "repeats": repeats}


# --- 1. bi-level step vs plain LoRA step --------------------------------------------------------

def step_ratio(repeats: int) -> dict:
    cfg = EraseConfig(concept="nude", prompt="a nude girl with beautiful hair", resolution=RATIO_RESOLUTION)
    p = comfy_host.TINY_FLUX
    prompts = gpu_check.random_prompts(p["context"], p["vec"], T5_TOKENS)
    parts = {k: [] for k in ("erase_forward", "erase_backward", "preserve_forward", "preserve_backward",
                             "plain_forward", "plain_backward")}
    gen = torch.Generator().manual_seed(7)
    with torch.inference_mode(False), torch.enable_grad():
        trainer = gpu_check.make_trainer(comfy_host.tiny_flux(seed=0), cfg, prompts, checkpointing=False)
        runner, optimizer = trainer.runner, trainer.optimizer

        def optimize(loss, name):
            start = time.process_time()
            if loss.requires_grad:  # the default preserve step backpropagates its retain term itself
                loss.backward()
            optimizer.step()
            parts[f"{name}_backward"].append(time.process_time() - start)

        def timed_forward(name, fn):
            optimizer.zero_grad(set_to_none=True)  # before the step: the preserve step backpropagates its retain term itself
            start = time.process_time()
            loss = fn()
            parts[f"{name}_forward"].append(time.process_time() - start)
            return loss

        def bilevel():
            optimize(timed_forward("erase", lambda: trainer.erase_step()[0]), "erase")
            optimize(timed_forward("preserve", lambda: trainer.preserve_step()[0]), "preserve")

        def plain():
            def forward():
                i = int(torch.randint(trainer.traj.num_images, (1,), generator=gen))
                sigma = float(torch.rand((), generator=gen))
                x0 = trainer.traj.x0[i][None]
                noise = torch.randn(x0.shape, generator=gen).to(x0.dtype)
                v_lora = runner.velocity(noised(x0, noise, sigma), sigma, [prompts.concept], cfg.guidance_train)
                return losses.flow_matching_loss(v_lora.float(), noise.float(), x0.float())
            optimize(timed_forward("plain", forward), "plain")

        forwards_before = runner.counter.forwards
        bilevel()
        bilevel_forwards = runner.counter.forwards - forwards_before
        timing = interleaved(bilevel, plain, repeats)
    medians = {k: round(statistics.median(v) * 1e3, 2) for k, v in parts.items()}
    return {"ratio": timing["ratio"], "bilevel_ms": timing["a_ms"], "plain_ms": timing["b_ms"], "parts_ms": medians,
            "bilevel_forwards": bilevel_forwards, "repeats": repeats}


# --- 2. and 3. sampling-step overheads ------------------------------------------------------------

def _import_pack():
    return comfy_host.import_pack_module("nodes.apply_runtime")


def _denoise_inputs(side: int, seed: int = 3):
    p = comfy_host.TINY_FLUX
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 16, side, side), generator=gen)
    context = torch.randn((1, T5_TOKENS, p["context"]), generator=gen)
    pooled = torch.randn((1, p["vec"]), generator=gen)
    return x, context, pooled


def _denoise(patcher, x, context, pooled, transformer_options):
    sigma = torch.full((1,), 0.7)
    with torch.inference_mode():
        patcher.model.apply_model(x, sigma, c_crossattn=context, y=pooled, guidance=torch.full((1,), 3.5),
                                  transformer_options={**transformer_options, "sigmas": sigma})


def apply_overhead(repeats: int) -> dict:
    apply_runtime = _import_pack()
    p = comfy_host.TINY_FLUX
    # three copies, all loaded at once: base, base + LoRA, and a second base for an A/A control
    base, other, control = (comfy_host.tiny_flux(seed=0) for _ in range(3))
    gen = torch.Generator().manual_seed(11)
    lora = ErasureLoRA(flux_targets(("txt_qk",), p["hidden"], p["depth"], p["depth_single"]), rank=8, generator=gen)
    with torch.no_grad():
        for b in lora.lora_B:
            b.copy_(torch.randn(b.shape, generator=gen) * 0.05)  # a trained-looking LoRA, not B = 0
    with torch.inference_mode():
        patched, _ = apply_runtime.apply(other, apply_runtime.FROM_INPUT, 1.0,
                                         {"state_dict": peft_state_dict(lora), "metadata": {}})
    comfy.model_management.load_models_gpu([base, patched, control])
    key = "double_blocks.0.txt_attn.qkv.weight"
    if torch.equal(base.model.diffusion_model.state_dict()[key], patched.model.diffusion_model.state_dict()[key]):
        raise RuntimeError("Apply did not change the weights: the overhead would be measured on two base models")
    runtime_patched = [name for name, m in patched.model.diffusion_model.named_modules()
                       if getattr(m, "weight_function", None) or getattr(m, "bias_function", None)]
    x, context, pooled = _denoise_inputs(SAMPLING_RESOLUTION // 8)
    timing = interleaved(lambda: _denoise(patched, x, context, pooled, {}),
                         lambda: _denoise(base, x, context, pooled, {}), repeats)
    control_timing = interleaved(lambda: _denoise(control, x, context, pooled, {}),
                                 lambda: _denoise(base, x, context, pooled, {}), repeats)
    comfy.model_management.unload_all_models()
    return {"ratio": timing["ratio"], "lora_ms": timing["a_ms"], "base_ms": timing["b_ms"], "repeats": repeats,
            "control_ratio": control_timing["ratio"], "modules_patched_at_run_time": len(runtime_patched)}


def capture_overhead(repeats: int) -> dict:
    model = comfy_host.tiny_flux(seed=0)
    comfy.model_management.load_models_gpu([model])
    last = model.model.diffusion_model.params.depth - 1
    capture = InspectAttentionOverride([torch.tensor([2, 3]), torch.tensor([5])], blocks=(last,))
    with_capture = {"optimized_attention_override": capture, N_TXT_KEY: T5_TOKENS}
    x, context, pooled = _denoise_inputs(SAMPLING_RESOLUTION // 8)
    timing = interleaved(lambda: _denoise(model, x, context, pooled, with_capture),
                         lambda: _denoise(model, x, context, pooled, {}), repeats)
    if not capture.calls:
        raise RuntimeError("the capture recorded nothing: the overhead would be measured without it")
    comfy.model_management.unload_all_models()
    return {"ratio": timing["ratio"], "capture_ms": timing["a_ms"], "plain_ms": timing["b_ms"], "repeats": repeats}


# --- 4. peak memory of training on a real-width Flux (child process) -------------------------------

def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}: the memory benchmark needs Linux")


def _reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: VmHWM := the current RSS


class SavedForBackward(torch.autograd.graph.saved_tensors_hooks):
    """Bytes autograd keeps for backward, by unique storage, not counting the model's own weights.
    Inside checkpointed regions the checkpoint's own hooks take over: those tensors are not seen."""

    def __init__(self, exclude_ptrs: set[int]):
        self.storages: dict[int, int] = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in exclude_ptrs:
                self.storages[storage.data_ptr()] = storage.nbytes()
            return t

        super().__init__(pack, lambda t: t)

    @property
    def mb(self) -> float:
        return sum(self.storages.values()) / 2**20  # MiB, like every *_mb of this benchmark


def memory_child() -> dict:
    """One erase + one preserve step, without then with checkpointing, on hidden 3072 with 1 + 1 blocks.
    The peak of each step is taken from its own start (VmHWM reset); the baseline is the RSS with the
    weights, the trainer and its data in place, before the first step."""
    start = time.perf_counter()
    patcher = gpu_check.load_random_flux(REAL_WIDTH_1PLUS1, torch.device("cpu"), None)
    cfg = EraseConfig(concept="nude", prompt="a nude girl with beautiful hair", resolution=MEMORY_RESOLUTION)
    prompts = gpu_check.random_prompts(REAL_WIDTH_1PLUS1["context"], REAL_WIDTH_1PLUS1["vec"], MEMORY_T5_TOKENS)
    out = {"weights_mb": gpu_check.weights_bytes(patcher) / 2**20, "load_s": time.perf_counter() - start,
           "dtype": str(patcher.model.get_dtype()).replace("torch.", ""), "resolution": MEMORY_RESOLUTION,
           "image_tokens": (MEMORY_RESOLUTION // 16) ** 2, "text_tokens": MEMORY_T5_TOKENS, "threads": torch.get_num_threads()}
    weight_ptrs = {t.untyped_storage().data_ptr() for t in patcher.model.state_dict().values()}
    for checkpointing in (False, True):
        with torch.inference_mode(False), torch.enable_grad():
            trainer = gpu_check.make_trainer(patcher, cfg, prompts, checkpointing)
            baseline = _status_mb("VmRSS")
            saved, seconds, peaks = [], [], []
            for step in (trainer.erase_step, trainer.preserve_step):
                trainer.optimizer.zero_grad(set_to_none=True)  # before: the preserve step backpropagates its retain term itself
                _reset_peak_rss()
                t0 = time.perf_counter()
                hooks = SavedForBackward(weight_ptrs)
                with hooks:
                    loss, _ = step()
                saved.append(hooks.mb)
                if loss.requires_grad:
                    loss.backward()
                trainer.optimizer.step()
                seconds.append(time.perf_counter() - t0)
                peaks.append(_status_mb("VmHWM"))
        out["checkpointing" if checkpointing else "plain"] = {
            "baseline_rss_mb": baseline, "peak_rss_mb": max(peaks), "peak_minus_baseline_mb": max(peaks) - baseline,
            "peak_rss_mb_per_step": {"erase": peaks[0], "preserve": peaks[1]},
            "saved_for_backward_mb": {"erase": saved[0], "preserve": saved[1]},
            "seconds": {"erase": seconds[0], "preserve": seconds[1]}}
        del trainer
    return out


def weight_copies() -> dict:
    """Weight-shaped tensors autograd keeps for one erase-step forward of the tiny Flux (2 + 2 blocks), by
    base weight dtype and checkpointing: merged LoRA weights (W + delta) and, where ComfyUI casts the
    weights to the compute dtype, the cast copies. Model parameters themselves are not counted."""
    p = comfy_host.TINY_FLUX
    cfg = EraseConfig(concept="nude", prompt="a nude girl with beautiful hair", resolution=64)
    prompts = gpu_check.random_prompts(p["context"], p["vec"], 24)
    out = {}
    for name, dtype in (("float32", None), ("bfloat16", torch.bfloat16), ("float8_e4m3fn", torch.float8_e4m3fn)):
        for checkpointing in (False, True):
            patcher = gpu_check.load_random_flux(p, torch.device("cpu"), dtype)
            weights = patcher.model.diffusion_model.state_dict().values()
            params = {t.untyped_storage().data_ptr() for t in weights}
            shapes = {tuple(t.shape) for t in weights if t.ndim == 2}
            kept: dict[int, int] = {}

            def pack(t):
                storage = t.untyped_storage()
                if storage.data_ptr() not in params and (tuple(t.shape) in shapes or tuple(t.shape[::-1]) in shapes):
                    kept[storage.data_ptr()] = storage.nbytes()
                return t

            with torch.inference_mode(False), torch.enable_grad():
                trainer = gpu_check.make_trainer(patcher, cfg, prompts, checkpointing)
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    trainer.erase_step()
            key = f"{name}{'_checkpointing' if checkpointing else ''}"
            out[key] = {"count": len(kept), "kib": sum(kept.values()) / 1024,
                        "compute": str(patcher.model.manual_cast_dtype or patcher.model.get_dtype()).replace("torch.", "")}
    comfy.model_management.unload_all_models()
    return out


def peak_memory() -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "tests.benchmarks.speed_memory", "--memory-child"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- report -----------------------------------------------------------------------------------------

def _verdict(value: float, target: float) -> str:
    return "met" if value <= target else "**missed**"


def markdown(ratio: dict, applied: dict, captured: dict, memory: dict) -> str:
    return "\n".join(_speed_lines(ratio, applied, captured) + _memory_lines(memory))


def _speed_lines(ratio: dict, applied: dict, captured: dict) -> list[str]:
    parts = ratio["parts_ms"]
    lines = [
        "| measure | target | measured | A (ms, median) | B (ms, median) | |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
        f"| bi-level step (A) / plain LoRA step (B), tiny Flux, {RATIO_RESOLUTION} px, {T5_TOKENS} T5 tokens | <= 2.5 | "
        f"{ratio['ratio']:.2f} | {ratio['bilevel_ms']:.1f} | {ratio['plain_ms']:.1f} | {_verdict(ratio['ratio'], 2.5)} |",
        f"| LoRA applied by Apply (A) / base model (B), one denoising call, {SAMPLING_RESOLUTION} px | <= 1.01 | "
        f"{applied['ratio']:.3f} | {applied['lora_ms']:.2f} | {applied['base_ms']:.2f} | {_verdict(applied['ratio'], 1.01)} |",
        f"| InspectAttentionOverride on (A) / off (B), one denoising call, {SAMPLING_RESOLUTION} px | <= 1.3 | "
        f"{captured['ratio']:.3f} | {captured['capture_ms']:.2f} | {captured['plain_ms']:.2f} | {_verdict(captured['ratio'], 1.3)} |",
        "",
        f"Ratios are medians of per-pair ratios over {ratio['repeats']} / {applied['repeats']} / {captured['repeats']} "
        "interleaved pairs, timed in process CPU time on one thread (the two cores are shared with other work). "
        f"Noise floor: an A/A control (a second copy of the base model against the base model) gives "
        f"{applied['control_ratio']:.3f}. Apply leaves {applied['modules_patched_at_run_time']} modules with a "
        "run-time weight function: ComfyUI patched the LoRA into the weights at load, so the applied model runs the "
        "same operations on tensors of the same dtype as the base model, and any difference is noise.",
        "",
        "Where the milliseconds of a bi-level step go (medians):",
        "",
        "| part | ms |",
        "| --- | ---: |",
        f"| erase_step forward: frozen references (anchor + concept, one batch of 2: this trainer is built on given latents, which carry no stored velocity; a sampled run passes the anchor only) + training forward with Eq. 3 capture | {parts['erase_forward']:.1f} |",
        f"| erase backward + AdamW | {parts['erase_backward']:.1f} |",
        f"| preserve_step: training forward + backward on one retain prompt's stored frozen state (the retain-set distillation, backpropagated inside the step; the concept's own forward runs only for Eq. 4 on the concept or Eq. 5, both off by default) | {parts['preserve_forward']:.1f} |",
        f"| preserve: AdamW (its loss is already backpropagated) | {parts['preserve_backward']:.1f} |",
        f"| plain step: training forward | {parts['plain_forward']:.1f} |",
        f"| plain step: backward + AdamW | {parts['plain_backward']:.1f} |",
        "",
        f"A bi-level step runs {ratio['bilevel_forwards']:.1f} forwards (in samples) and backwards through 2 "
        "samples (the erase step's training forward and the retain sample's, one after the other so that one "
        "sample's activations are alive at a time); a plain LoRA step runs 1 and 1. "
        "The ratio is set by this pass count, not by overhead: the frozen references of Eq. 2 and the "
        "retain-set distillation are passes a plain LoRA step does not have. A run on "
        "sampled concept images (the default) has the concept reference stored and runs one forward fewer; the "
        "same counts hold on FLUX.1-dev (no truncated passes with Eq. 5 off).",
        "",
    ]
    return lines


def _memory_lines(memory: dict) -> list[str]:
    plain, ckpt = memory["plain"], memory["checkpointing"]
    lines = [
        f"Peak memory of one erase + one preserve step on a Flux of real width (hidden 3072, 24 heads, 1 double + 1 "
        f"single block, T5 width 4096), {memory['dtype']} weights and compute, {memory['resolution']} px "
        f"({memory['image_tokens']} image tokens; 512 px was too slow for this benchmark on two shared cores) and "
        f"{memory['text_tokens']} text tokens, default config, {memory['threads']} threads. Memory is the process's resident set "
        "(Linux VmHWM, reset before each step; glibc's mmap threshold fixed at 128 KiB so freed tensors leave the "
        "resident set), measured in a child process; 'saved for backward' is what autograd holds between forward "
        "and backward (saved_tensors_hooks, unique storages, model weights excluded; inside checkpointed blocks the "
        "checkpoint holds only the block inputs, which these hooks do not see).",
        "",
        "| checkpointing | peak RSS MiB | RSS before the steps MiB | peak - before MiB (erase / preserve) | saved for backward MiB (erase / preserve) | s (erase / preserve) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in (("off", plain), ("on", ckpt)):
        step_peaks = m["peak_rss_mb_per_step"]
        lines.append(
            f"| {name} | {m['peak_rss_mb']:.0f} | {m['baseline_rss_mb']:.0f} | "
            f"{step_peaks['erase'] - m['baseline_rss_mb']:.0f} / {step_peaks['preserve'] - m['baseline_rss_mb']:.0f} | "
            f"{m['saved_for_backward_mb']['erase']:.1f} / {m['saved_for_backward_mb']['preserve']:.1f} | "
            f"{m['seconds']['erase']:.0f} / {m['seconds']['preserve']:.0f} |")
    copies = memory["weight_copies_tiny"]
    lines += ["", f"Weights: {memory['weights_mb']:.0f} MiB ({memory['dtype']}).", "",
              "Weight-shaped copies autograd keeps over one erase-step forward of the tiny Flux (2 double + 2 single "
              "blocks; model parameters not counted): merged LoRA weights (W + delta, from double block 1 on) and, "
              "where ComfyUI casts the base weights to the compute dtype, the cast copies of every linear layer "
              "after the LoRA's first use (derived: 1 and 19 tensors; with checkpointing 0 and 1, the final layer's, "
              "which runs outside the checkpointed blocks).", "",
              "| base weights | compute | copies kept (count, KiB) | with checkpointing |", "| --- | --- | ---: | ---: |"]
    for name in ("float32", "bfloat16", "float8_e4m3fn"):
        off, on = copies[name], copies[f"{name}_checkpointing"]
        lines.append(f"| {name} | {off['compute']} | {off['count']}, {off['kib']:.0f} | {on['count']}, {on['kib']:.0f} |")
    lines += ["", "The budget for FLUX.1-dev built from these numbers is in docs/performance.md."]
    return lines


def main():
    torch.set_num_threads(1)
    start = time.perf_counter()
    memory = peak_memory()  # first: the child gets both cores while this process waits
    log.info("memory: %s", memory)
    ratio = step_ratio(repeats=25)
    log.info("step ratio: %s", ratio)
    applied = apply_overhead(repeats=61)
    log.info("apply overhead: %s", applied)
    captured = capture_overhead(repeats=41)
    log.info("capture overhead: %s", captured)
    memory["weight_copies_tiny"] = weight_copies()
    log.info("weight copies: %s", memory["weight_copies_tiny"])
    data = {
        "step_ratio_vs_plain_lora": round(ratio["ratio"], 2),
        "apply_overhead_ratio": round(applied["ratio"], 3),
        "capture_overhead_ratio": round(captured["ratio"], 3),
        "peak_memory_mb": {
            "train_hidden3072_1plus1_blocks": round(memory["plain"]["peak_rss_mb"]),
            "train_hidden3072_1plus1_blocks_checkpointing": round(memory["checkpointing"]["peak_rss_mb"]),
            "train_increase_hidden3072_1plus1_blocks": round(memory["plain"]["peak_minus_baseline_mb"]),
            "train_increase_hidden3072_1plus1_blocks_checkpointing": round(memory["checkpointing"]["peak_minus_baseline_mb"]),
            "saved_for_backward_hidden3072_1plus1_blocks": round(max(memory["plain"]["saved_for_backward_mb"].values()), 1),
            "saved_for_backward_hidden3072_1plus1_blocks_checkpointing":
                round(max(memory["checkpointing"]["saved_for_backward_mb"].values()), 1),
            "weights_mb": round(memory["weights_mb"]),
        },
        "speed_memory": {"step_ratio": ratio, "apply_overhead": applied, "capture_overhead": captured,
                         "memory": memory, "seconds": round(time.perf_counter() - start, 1)},
    }
    results.write_section("speed_memory", data, "Speed and memory", markdown(ratio, applied, captured, memory),
                          command=COMMAND)
    log.info("speed_memory done in %.0f s", time.perf_counter() - start)


if __name__ == "__main__":
    if "--memory-child" in sys.argv:
        print(json.dumps(memory_child()))
    else:
        logging.basicConfig(level=logging.INFO)
        main()

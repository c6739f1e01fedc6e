"""Hand-built trainer pieces on the tiny Flux: random text conditions instead of a text encoder."""

import torch

from eraseanything_core.comfy.flux import build_runner
from eraseanything_core.config import EraseConfig
from eraseanything_core.runner import TextCond
from eraseanything_core.trainer import ConceptPrompt, ErasureTrainer, Prompts, prepare_data, sample_irrelevant, sample_retain
from tests import comfy_host


def random_cond(gen, text, token_idx, n_txt=24, dtype=torch.float32):
    ctx = torch.randn((1, n_txt, comfy_host.TINY_FLUX["context"]), generator=gen, dtype=torch.float64).to(dtype)
    pooled = torch.randn((1, comfy_host.TINY_FLUX["vec"]), generator=gen, dtype=torch.float64).to(dtype)
    return TextCond(text, ctx, pooled, torch.tensor(token_idx))


def random_prompts(seed=0, dtype=torch.float32, lines=1, retain=0):
    """One concept prompt line (or `lines`), each with a rewording and its own anchor, and `retain`
    retain prompts."""
    gen = torch.Generator().manual_seed(seed)
    concept = random_cond(gen, "a nude girl", [2, 3], dtype=dtype)
    first = ConceptPrompt(concept, [concept, random_cond(gen, "girl nude a", [4, 5], dtype=dtype)],
                          random_cond(gen, "a girl", [], dtype=dtype))
    prompts = Prompts(lines=[first], synonyms=[random_cond(gen, "naked", [0, 1], dtype=dtype)],
                      irrelevant=[random_cond(gen, w, [0], dtype=dtype) for w in ("car", "tree", "sky")])
    for n in range(1, lines):
        cond = random_cond(gen, f"nude line {n}", [0], dtype=dtype)
        prompts.lines.append(ConceptPrompt(cond, [cond], random_cond(gen, f"line {n}", [], dtype=dtype)))
    prompts.retain = [random_cond(gen, f"retain {r}", [], dtype=dtype) for r in range(retain)]
    return prompts


def make_trainer(model_patcher, cfg: EraseConfig, prompts: Prompts, lora_init_b=0.0):
    """An ErasureTrainer on the model (its LoRA from cfg.seed); lora_init_b > 0 starts B random, so that
    gradients reach A too."""
    runner = build_runner(model_patcher, cfg)
    if lora_init_b:
        gen = torch.Generator().manual_seed(cfg.seed + 100)
        with torch.no_grad():
            for b in runner.lora.lora_B:
                b.copy_(torch.randn(b.shape, generator=gen, dtype=torch.float64) * lora_init_b)
    runner.load()
    trajectories = prepare_data(cfg, runner, prompts)
    return ErasureTrainer(cfg, runner, prompts, trajectories, irrelevant_x0=sample_irrelevant(cfg, runner, prompts),
                          retain=sample_retain(cfg, runner, prompts))


def tiny_cfg(**changes):
    base = dict(concept="nude", steps=4, rank=2, resolution=32, num_images=2, sample_steps=4, prompt_variants=2)
    return EraseConfig(**{**base, **changes})


# A committed LoRA is reproduced exactly on the machine that wrote it (same CPU kernels, same thread count).
# Another x86 CPU takes other float32 kernel paths (seen: an AVX-512 AMD EPYC against the fixtures' writer,
# 4e-5 at most on weights up to 0.9, 12 steps at lr 1e-2), so a committed file is matched within this
# absolute tolerance; a change of what is computed (a loss, a schedule, a seed) moves the weights by 1e-2 or more.
COMMITTED_LORA_ATOL = 2e-4


def assert_same_lora(ours: dict, committed: dict, what: str):
    """The LoRA `ours` is the committed one: the same keys, every tensor within COMMITTED_LORA_ATOL."""
    assert sorted(ours) == sorted(committed), f"{what}: the keys differ"
    worst = {k: (ours[k] - committed[k]).abs().max().item() for k in ours}
    changed = {k: d for k, d in worst.items() if d > COMMITTED_LORA_ATOL}
    assert not changed, (f"{what}: {len(changed)} of {len(ours)} tensors differ by more than {COMMITTED_LORA_ATOL:g}, "
                         f"e.g. {sorted(changed.items(), key=lambda kv: -kv[1])[:2]}")

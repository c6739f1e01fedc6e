"""The bi-level loop of EraseAnything: alternating erase and preserve steps on one LoRA (Algorithm 1).

erase    (the paper's lower level): Eq. 2 ESD negative guidance + Eq. 3 attention attenuation, on a state
         of one concept prompt's trajectory, with that prompt's anchor and token columns
preserve (the paper's upper level): Eq. 4 flow matching on the concept latents, distillation of the
         frozen model's velocity on the retain set (stored on the retain prompts' own trajectories),
         optionally flow matching on one frozen sample per irrelevant concept (D_ir) and Eq. 5 reverse
         self-contrastive loss against a synonym and K irrelevant concepts (weights: config.py's presets)

As in the released code, the two levels are single alternating steps of one AdamW (there is no
nested optimisation); `erase_steps_per_preserve` = k runs k erase steps per preserve step. Every
difference from the released code is listed in docs/method.md.
"""

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import losses
from .concepts import ConceptSet, augment_prompt, resolve_concepts
from .config import EraseConfig
from .data import (Trajectories, concat, euler_sample, noised, sample_trajectories, trajectories_from_latents,
                   uniform_sigmas)
from .runner import AttentionCapture, Runner, TextCond, TextEncoder, block_index, token_grid

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    def __init__(self, step: int, values: dict):
        self.step, self.values = step, values
        super().__init__(f"loss became NaN/inf at step {step} ({values}); training stopped and the LoRA from "
                         f"step {step - 1} was kept. Lower the learning rate or the loss weights, or use float32 LoRA weights.")


@dataclass
class StepReport:
    step: int            # 1-based
    total: int
    phase: str           # "erase" | "preserve"
    values: dict         # loss terms of this step, floats
    preview: torch.Tensor | None = None  # first and every preview_every-th erase step: (h_tok, w_tok) map in [0, 1]
    preview_latent: torch.Tensor | None = None  # with a preview: (c, h, w) model-space final sample of the
                                                # trajectory whose state the map was read at (a picture to overlay)


@dataclass
class Callbacks:
    on_step: Callable[[StepReport], None] | None = None
    on_data: Callable[[str, int, int], None] | None = None         # (label, done, total) of data generation
    check_interrupt: Callable[[], None] | None = None              # raises to stop; called every step
    preview_every: int = 10                                        # in erase steps



class DataProgress:
    """Counts the frozen model's sampling passes of data generation (concept trajectories, then the
    irrelevant concepts' samples) toward one total, for `Callbacks.on_data`, and honours interrupts."""

    def __init__(self, callbacks: "Callbacks | None", total: int):
        self.callbacks, self.total, self.done = callbacks or Callbacks(), total, 0

    def counted(self, label: str, velocity):
        def step(x, sigma):
            if self.callbacks.check_interrupt is not None:
                self.callbacks.check_interrupt()
            v = velocity(x, sigma)
            self.done += 1
            if self.callbacks.on_data is not None:
                self.callbacks.on_data(label, self.done, self.total)
            return v
        return step


@dataclass
class ConceptPrompt:
    """One line of the prompt input, encoded."""
    cond: TextCond                     # the line as typed
    variants: list[TextCond]           # the line, then augmented rewordings, each with its own token positions
    anchor: TextCond                   # this line's ESD anchor c_0 (Eq. 2)


@dataclass
class Prompts:
    lines: list[ConceptPrompt]
    synonyms: list[TextCond]
    irrelevant: list[TextCond]
    retain: list[TextCond] = field(default_factory=list)  # distilled from the frozen model in the preserve step

    @property
    def concept(self) -> TextCond:
        return self.lines[0].cond

    @property
    def anchor(self) -> TextCond:
        return self.lines[0].anchor


@dataclass
class TrainResult:
    lora: torch.nn.Module
    concepts: ConceptSet
    history: list[dict] = field(default_factory=list)
    cost: dict = field(default_factory=dict)
    pathway: dict = field(default_factory=dict)
    seconds: float = 0.0


def encode_prompts(cfg: EraseConfig, concepts: ConceptSet, text: TextEncoder) -> Prompts:
    """Every prompt the run needs, encoded once up front, so the text encoders can leave the GPU. The
    prompt_variants are shared among the lines (each line gets at least itself)."""
    rng = random.Random(cfg.seed)
    per_line = max(1, -(-cfg.prompt_variants // len(concepts.prompts)))
    lines = []
    for prompt, anchor in zip(concepts.prompts, concepts.anchors):
        variants = [text.encode(prompt, concepts.concept)]
        for _ in range(per_line - 1):
            augmented, word = augment_prompt(prompt, concepts.concept, concepts.synonyms, rng,
                                             cfg.shuffle_p, cfg.synonym_swap_p)
            variants.append(text.encode(augmented, word))
        lines.append(ConceptPrompt(variants[0], variants, text.encode(anchor, None)))
    return Prompts(lines=lines, synonyms=[text.encode(s, s) for s in concepts.synonyms],
                   irrelevant=[text.encode(w, w) for w in concepts.irrelevant],
                   retain=[text.encode(r, None) for r in concepts.retain])


def _attn_block_indices(cfg: EraseConfig, depth: int) -> tuple[int, ...]:
    return tuple(sorted({block_index(i, depth, "attn_blocks: block") for i in cfg.attn_blocks}))


def _same_length_groups(conds: list[TextCond]) -> list[list[TextCond]]:
    """Consecutive runs of prompts with the same text length: each run is one batched pass. Order kept."""
    groups: list[list[TextCond]] = []
    for c in conds:
        if groups and groups[-1][0].context.shape == c.context.shape:
            groups[-1].append(c)
        else:
            groups.append([c])
    return groups


def _wide(t: torch.Tensor) -> torch.Tensor:
    """Losses are taken in float32 at least (bf16 velocities), float64 when the model is float64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _image_feature(probs: torch.Tensor, n_txt: int, feature: str) -> torch.Tensor:
    """Eq. 5 feature: attention of the image queries on the concept columns, mean over concept tokens,
    of head 0 (the released code) or the mean over heads. probs (1, h, n, k) -> (1, n_img). Image rows
    only: the released code also mixed in the text rows of different prompts, which are not comparable
    (which rows makes no measurable difference; which heads does: docs/method.md)."""
    image = probs[:, :, n_txt:, :]
    return image[:, 0].mean(dim=-1) if feature == "head0" else image.mean(dim=(1, 3))


class ErasureTrainer:
    def __init__(self, cfg: EraseConfig, runner: Runner, prompts: Prompts, trajectories: Trajectories,
                 callbacks: Callbacks | None = None, irrelevant_x0: torch.Tensor | None = None,
                 retain: Trajectories | None = None):
        self.cfg, self.runner, self.prompts, self.traj = cfg, runner, prompts, trajectories
        self.irrelevant_x0 = irrelevant_x0  # (K, c, h, w), one frozen sample per irrelevant concept
        self.retain = retain  # one frozen trajectory per retain prompt, with its velocities
        self.lora = runner.lora
        self.callbacks = callbacks or Callbacks()
        self.blocks = _attn_block_indices(cfg, runner.double_blocks)
        self.rng = random.Random(cfg.seed + 1)
        self.gen = torch.Generator().manual_seed(cfg.seed + 2)
        self.optimizer = torch.optim.AdamW(self.lora.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.sigma_last = float(trajectories.sigmas[trajectories.steps // 2])
        self.history: list[dict] = []

    def _references(self):
        """Frozen model (paper, ESD) or current LoRA model without grad (released code)."""
        return self.lora.disabled() if self.cfg.reference == "frozen" else torch.no_grad()

    def _line(self, i: int) -> ConceptPrompt:
        """The prompt line whose trajectory i is."""
        idx = self.traj.prompt_idx
        return self.prompts.lines[0 if idx is None else int(idx[i])]

    def _esd_state(self, i: int, j: int) -> torch.Tensor:
        if self.cfg.esd_sampling == "cached":
            return self.traj.x_t[i, j][None]
        # Original ESD: sample the concept till step j with the current model, from fresh noise.
        noise = torch.randn(self.traj.noise[:1].shape, generator=self.gen)
        with torch.no_grad():
            return euler_sample(lambda x, s: self.runner.velocity(x, s, [self._line(i).cond], self.cfg.guidance_esd),
                                noise.to(self.runner.device), self.traj.sigmas, until=j)

    def _stored_concept_velocity(self, i: int, j: int) -> torch.Tensor | None:
        """The frozen concept velocity at cached state (i, j), taken by the sampler that made the state.
        It is ESD's reference for the concept prompt; the augmented variant trained in this step is a
        rewording of it at a state of the concept's own trajectory, so the frozen model's concept velocity
        there is the velocity to negate (Eq. 2). Saves one reference forward per erase step."""
        if self.cfg.reference != "frozen" or self.cfg.esd_sampling != "cached" or self.traj.velocity is None:
            return None
        return self.traj.velocity[i, j][None].to(self.runner.device)

    def erase_step(self) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        i, j = self.rng.randrange(self.traj.num_images), self.rng.randrange(self.traj.steps)
        sigma = float(self.traj.sigmas[j])
        line = self._line(i)  # the prompt this state was sampled with: its rewording, anchor and columns
        variant = self.rng.choice(line.variants)
        x_t = self._esd_state(i, j).to(self.runner.device)
        stored = self._stored_concept_velocity(i, j)
        refs = [line.anchor] + ([variant] if stored is None else [])
        with torch.no_grad(), self._references():
            v_refs = [v for group in _same_length_groups(refs) for v in
                      self.runner.velocity(x_t.expand(len(group), -1, -1, -1), sigma, group, cfg.guidance_esd).split(1)]
        v_ref_anchor = v_refs[0]
        v_ref_concept = v_refs[1] if stored is None else stored
        capture = AttentionCapture(self.blocks, [variant.token_idx])
        v_lora_concept = self.runner.velocity(x_t, sigma, [variant], cfg.guidance_esd, capture=capture)
        l_esd = losses.esd_loss(_wide(v_lora_concept), _wide(v_ref_anchor), _wide(v_ref_concept), cfg.eta)
        # Eq. 3 on the ESD forward itself (the released code spent a second forward on a noised D_un image).
        l_attn = sum(losses.attention_attenuation_loss(capture.probs[b][0]) for b in self.blocks)
        self.sigma_last = sigma
        self._last_probs = (capture.probs[self.blocks[-1]][0].detach(), variant.context.shape[1], x_t.shape[-2:], i)
        loss = cfg.lambda_esd * l_esd + cfg.lambda_attn * l_attn
        return loss, {"esd": l_esd.item(), "attn": l_attn.item()}

    def preserve_step(self) -> tuple[torch.Tensor, dict]:
        cfg, p = self.cfg, self.prompts
        i = self.rng.randrange(self.traj.num_images)
        sigma = self.sigma_last  # the released code reuses the preceding erase step's t
        x0 = self.traj.x0[i][None]
        noise = torch.randn(x0.shape, generator=self.gen, dtype=torch.float64).to(x0.dtype)
        x_t = noised(x0, noise, sigma).to(self.runner.device)
        variant = self.rng.choice(self._line(i).variants)
        values, irrelevant_term = {}, 0.0
        if cfg.lambda_preserve_irrelevant > 0 and self.irrelevant_x0 is not None:
            # Keep the irrelevant concepts: flow matching on the frozen model's samples of them (D_ir).
            # Backpropagated here, before the concept's forward, so that only one sample's activations are
            # alive at a time (the preserve step's peak memory is a single forward's). Its value joins the
            # returned loss detached: the caller's backward adds the rest of the gradient.
            k = self.rng.randrange(len(p.irrelevant))
            x0_irr = self.irrelevant_x0[k][None]
            noise_irr = torch.randn(x0_irr.shape, generator=self.gen, dtype=torch.float64).to(x0_irr.dtype)
            v_irr = self.runner.velocity(noised(x0_irr, noise_irr, sigma).to(self.runner.device), sigma,
                                         [p.irrelevant[k]], cfg.guidance_train)
            l_irr = losses.flow_matching_loss(_wide(v_irr), _wide(noise_irr.to(v_irr.device)), _wide(x0_irr.to(v_irr.device)))
            if l_irr.requires_grad:  # not under no_grad (finite-difference checks evaluate the value only)
                (cfg.lambda_preserve_irrelevant * l_irr).backward()
                self.runner.count_backward()
            irrelevant_term = cfg.lambda_preserve_irrelevant * l_irr.detach()
            values["fm_irrelevant"] = l_irr.item()
        if cfg.lambda_retain > 0 and self.retain is not None:
            l_retain = self._retain_distillation()
            irrelevant_term = irrelevant_term + cfg.lambda_retain * l_retain
            values["retain"] = l_retain.item()
        rsc = cfg.lambda_rsc > 0 and p.synonyms and p.irrelevant
        if cfg.lambda_fm <= 0 and not rsc:  # the concept's forward serves Eq. 4 and Eq. 5 only
            return torch.as_tensor(irrelevant_term), values  # already backpropagated
        block = self.blocks[-1]
        capture = AttentionCapture((block,), [variant.token_idx])
        v_lora = self.runner.velocity(x_t, sigma, [variant], cfg.guidance_train, capture=capture)
        l_fm = losses.flow_matching_loss(_wide(v_lora), _wide(noise.to(v_lora.device)), _wide(x0.to(v_lora.device)))
        values["fm"] = l_fm.item()
        loss = cfg.lambda_fm * l_fm + irrelevant_term
        if rsc:
            synonym = self.rng.choice(p.synonyms)
            feats = []
            with torch.no_grad(), self._references():
                for group in _same_length_groups([synonym] + p.irrelevant):  # truncated after the block
                    ref_capture = AttentionCapture((block,), [c.token_idx for c in group], stop_after=block)
                    self.runner.velocity(x_t.expand(len(group), -1, -1, -1), sigma, group, cfg.guidance_esd, capture=ref_capture)
                    feats += [_image_feature(pr, c.context.shape[1], cfg.rsc_feature)
                              for pr, c in zip(ref_capture.probs[block], group)]
            center = _image_feature(capture.probs[block][0], variant.context.shape[1], cfg.rsc_feature)
            contrastive = (losses.reverse_contrastive_loss if cfg.rsc_orientation == "released"
                           else losses.paper_contrastive_loss)
            l_rsc = contrastive(center, feats[0], torch.stack(feats[1:], dim=1), cfg.tau)
            loss = loss + cfg.lambda_rsc * l_rsc
            values["rsc"] = l_rsc.item()
        return loss, values

    def _retain_distillation(self) -> torch.Tensor:
        """Keep the retain set as the frozen model draws it: || v_lora(x_t, r) - v_frozen(x_t, r) ||^2 at a
        state x_t of retain prompt r's own frozen trajectory, v_frozen stored by the sampler that made the
        state (no reference pass). Backpropagated here, like the D_ir term; returns the detached value."""
        r, j = self.rng.randrange(self.retain.num_images), self.rng.randrange(self.retain.steps)
        x_t = self.retain.x_t[r, j][None].to(self.runner.device)
        v_frozen_retain = self.retain.velocity[r, j][None].to(self.runner.device)
        v_lora_retain = self.runner.velocity(x_t, float(self.retain.sigmas[j]), [self.prompts.retain[r]],
                                             self.cfg.guidance_esd)  # the guidance the frozen sampler used
        l_retain = torch.nn.functional.mse_loss(_wide(v_lora_retain), _wide(v_frozen_retain))
        if l_retain.requires_grad:
            (self.cfg.lambda_retain * l_retain).backward()
            self.runner.count_backward()
        return l_retain.detach()

    def _concept_map(self) -> torch.Tensor:
        """Where the image queries of the last erase step looked at the concept: (h_tok, w_tok) in [0, 1]."""
        probs, n_txt, (h, w), _ = self._last_probs
        concept_map = probs[0, :, n_txt:, :].mean(dim=(0, 2)).reshape(token_grid((h, w))).float().cpu()
        return concept_map / concept_map.max().clamp_min(1e-12)

    def run(self) -> list[dict]:
        cfg, cb = self.cfg, self.callbacks
        k = cfg.erase_steps_per_preserve
        erase_steps = 0
        for step in range(1, cfg.steps + 1):
            if cb.check_interrupt is not None:
                cb.check_interrupt()
            phase = "erase" if (step - 1) % (k + 1) < k else "preserve"
            self.optimizer.zero_grad(set_to_none=True)  # before the step: a step may backpropagate a term itself
            loss, values = self.erase_step() if phase == "erase" else self.preserve_step()
            values["total"] = loss.item()
            if not all(map(lambda v: v == v and abs(v) != float("inf"), values.values())):
                raise NonFiniteLossError(step, values)
            if loss.requires_grad:  # a preserve step without Eq. 4 / 5 has backpropagated its terms itself
                loss.backward()
                self.runner.count_backward()
            grads_finite = all(torch.isfinite(q.grad).all() for q in self.lora.parameters() if q.grad is not None)
            if not grads_finite:
                raise NonFiniteLossError(step, {**values, "grad": float("nan")})
            self.optimizer.step()
            self.history.append({"step": step, "phase": phase, **values})
            erase_steps += phase == "erase"
            if cb.on_step is not None:
                preview = phase == "erase" and (erase_steps == 1 or erase_steps % cb.preview_every == 0)
                report = StepReport(step, cfg.steps, phase, values)
                if preview:
                    report.preview, report.preview_latent = self._concept_map(), self.traj.x0[self._last_probs[3]]
                cb.on_step(report)
        return self.history


CONCEPT_SAMPLE_BATCH = 4  # trajectories sampled per batch


def images_per_line(cfg: EraseConfig, lines: int) -> list[int]:
    """How many of the num_images concept images each prompt line gets: an even split, at least one each."""
    return [max(1, cfg.num_images // lines + (k < cfg.num_images % lines)) for k in range(lines)]


def _batches(counts: list[int]) -> int:
    return sum(-(-n // CONCEPT_SAMPLE_BATCH) for n in counts)


def data_passes(cfg: EraseConfig, prompts: Prompts, user_latents: bool) -> int:
    """Sampling calls of data generation (each a batch): what DataProgress counts to."""
    concept = 0 if user_latents else _batches(images_per_line(cfg, len(prompts.lines))) * cfg.sample_steps
    irrelevant = cfg.sample_steps if cfg.lambda_preserve_irrelevant > 0 and prompts.irrelevant else 0
    retain = _batches([len(g) for g in _same_length_groups(prompts.retain)]) if cfg.lambda_retain > 0 else 0
    return concept + irrelevant + retain * cfg.sample_steps


def data_sigmas(cfg: EraseConfig, runner: Runner) -> torch.Tensor:
    return uniform_sigmas(cfg.sample_steps) if cfg.sigma_schedule == "uniform" else runner.sigmas(cfg.sample_steps)


def _data_noise(cfg: EraseConfig, runner: Runner, n: int, seed_offset: int) -> torch.Tensor:
    """(n, c, side, side) start noise of data generation, from its own seeded generator."""
    side = cfg.resolution // 8
    gen = torch.Generator().manual_seed(cfg.seed + seed_offset)
    return torch.randn((n, runner.latent_channels, side, side), generator=gen)


def prepare_data(cfg: EraseConfig, runner: Runner, prompts: Prompts,
                 concept_latents: torch.Tensor | None = None, progress: DataProgress | None = None) -> Trajectories:
    """The concept latents D_un with their trajectories, sampled once by the frozen model, each prompt line
    its share of num_images; or built by noising latents the user supplied (model space, (n, c, h, w))."""
    if concept_latents is not None:
        gen = torch.Generator().manual_seed(cfg.seed)
        traj = trajectories_from_latents(concept_latents.to("cpu", runner.dtype), data_sigmas(cfg, runner), gen)
        if len(prompts.lines) > 1:  # latent i goes with prompt line i mod lines
            traj.prompt_idx = torch.arange(traj.num_images) % len(prompts.lines)
        return traj
    counts = images_per_line(cfg, len(prompts.lines))
    noise = _data_noise(cfg, runner, sum(counts), 0)
    sigmas = data_sigmas(cfg, runner)
    progress = progress or DataProgress(None, 0)
    parts, start = [], 0
    with torch.no_grad(), runner.lora.disabled():
        for line, n in zip(prompts.lines, counts):
            label = f"sampling {sum(counts)} concept images" + (f" ({len(counts)} prompts)" if len(counts) > 1 else "")
            velocity = progress.counted(label, lambda x, s, c=line.cond: runner.velocity(x, s, [c] * x.shape[0],
                                                                                        cfg.guidance_esd))
            parts.append(sample_trajectories(velocity, noise[start:start + n].to(runner.device), sigmas,
                                             batch_size=CONCEPT_SAMPLE_BATCH, store_dtype=runner.dtype))
            start += n
    return concat(parts)


def sample_retain(cfg: EraseConfig, runner: Runner, prompts: Prompts,
                  progress: DataProgress | None = None) -> Trajectories | None:
    """One frozen trajectory per retain prompt, with the velocity at every state (the distillation target)."""
    if cfg.lambda_retain <= 0 or not prompts.retain:
        return None
    noise = _data_noise(cfg, runner, len(prompts.retain), 4)
    sigmas = data_sigmas(cfg, runner)
    progress = progress or DataProgress(None, 0)
    parts, start = [], 0
    with torch.no_grad(), runner.lora.disabled():
        for group in _same_length_groups(prompts.retain):
            chunk = noise[start:start + len(group)]
            for b in range(0, len(group), CONCEPT_SAMPLE_BATCH):
                conds = group[b:b + CONCEPT_SAMPLE_BATCH]
                velocity = progress.counted(f"sampling {len(prompts.retain)} retain images",
                                            lambda x, s, c=conds: runner.velocity(x, s, c, cfg.guidance_esd))
                parts.append(sample_trajectories(velocity, chunk[b:b + len(conds)].to(runner.device), sigmas,
                                                 batch_size=len(conds), store_dtype=runner.dtype))
            start += len(group)
    retain = concat(parts)
    retain.prompt_idx = None  # row r is retain prompt r
    return retain


def pathway_swap_test(runner: Runner, prompts: Prompts, trajectories: Trajectories, guidance: float,
                      samples: int = 2) -> dict:
    """How much of the concept reaches the image through the T5 tokens and how much through CLIP's
    pooled vector. A q/k LoRA (the paper's target) acts on the tokens only, so a concept carried by the
    pooled vector cannot be erased by it (choose the 'txt_qk+vector_in' targets then).

    On frozen trajectory states x_t, with c = concept and a = anchor:
        token_share  = |v(tokens c, pooled a) - v(a)| / |v(c) - v(a)|
        pooled_share = |v(tokens a, pooled c) - v(a)| / |v(c) - v(a)|
    """
    c, a = prompts.concept, prompts.anchor
    swapped_tokens = TextCond("tokens: concept, pooled: anchor", c.context, a.pooled, c.token_idx)
    swapped_pooled = TextCond("tokens: anchor, pooled: concept", a.context, c.pooled, a.token_idx)
    if c.context.shape != a.context.shape:  # cannot batch different text lengths; skip rather than guess
        return {}
    norms = {"full": 0.0, "tokens": 0.0, "pooled": 0.0}
    with torch.no_grad(), runner.lora.disabled():
        for i in range(min(samples, trajectories.num_images)):
            j = trajectories.steps // 2
            x_t = trajectories.x_t[i, j][None].expand(4, -1, -1, -1).to(runner.device)
            v_cc, v_aa, v_ca, v_ac = runner.velocity(x_t, float(trajectories.sigmas[j]),
                                                     [c, a, swapped_tokens, swapped_pooled], guidance).float().chunk(4)
            norms["full"] += (v_cc - v_aa).norm().item()
            norms["tokens"] += (v_ca - v_aa).norm().item()
            norms["pooled"] += (v_ac - v_aa).norm().item()
    full = max(norms["full"], 1e-12)
    result = {"token_share": norms["tokens"] / full, "pooled_share": norms["pooled"] / full}
    if result["pooled_share"] > result["token_share"]:
        log.warning("the concept reaches the image more through CLIP's pooled vector (%.2f) than through the T5 "
                    "tokens (%.2f): a q/k LoRA cannot erase that part; choose targets 'txt_qk+vector_in' in "
                    "Erasure Options.",
                    result["pooled_share"], result["token_share"])
    return result


def sample_irrelevant(cfg: EraseConfig, runner: Runner, prompts: Prompts,
                      progress: DataProgress | None = None) -> torch.Tensor | None:
    """One frozen sample per irrelevant concept, for the irrelevant-concept flow matching (D_ir)."""
    if cfg.lambda_preserve_irrelevant <= 0 or not prompts.irrelevant:
        return None
    noise = _data_noise(cfg, runner, len(prompts.irrelevant), 3)
    sigmas = data_sigmas(cfg, runner)
    progress = progress or DataProgress(None, 0)
    velocity = progress.counted(f"sampling {len(prompts.irrelevant)} irrelevant-concept images",
                                lambda x, s: runner.velocity(x, s, prompts.irrelevant, cfg.guidance_esd))
    with torch.no_grad(), runner.lora.disabled():
        return euler_sample(velocity, noise.to(runner.device), sigmas).to("cpu", runner.dtype)


def train_erasure(cfg: EraseConfig, runner: Runner, text: TextEncoder, callbacks: Callbacks | None = None,
                  concept_latents: torch.Tensor | None = None) -> TrainResult:
    """The whole run: concepts, prompts, data, loop. Sets up its own grad mode: ComfyUI runs nodes in
    inference mode, whose tensors autograd cannot save.
    concept_latents: optional (n, c, h, w) model-space latents of the concept instead of sampling."""
    with torch.inference_mode(False), torch.enable_grad():
        return _train_erasure(cfg, runner, text, callbacks, concept_latents)


def _train_erasure(cfg, runner, text, callbacks, concept_latents) -> TrainResult:
    start = time.perf_counter()
    concepts = resolve_concepts(cfg, text.embed_pooled)
    log.info("erasing %r (preset %s): synonyms %s, irrelevant %s", concepts.concept, cfg.preset,
             list(concepts.synonyms), list(concepts.irrelevant))
    for prompt, anchor in zip(concepts.prompts, concepts.anchors):
        log.info("  concept prompt %r -> anchor %r", prompt, anchor)
    if concepts.retain:
        log.info("retain set (%d prompts, one frozen trajectory each): %s", len(concepts.retain), list(concepts.retain))
    prompts = encode_prompts(cfg, concepts, text)
    runner.load()
    progress = DataProgress(callbacks, data_passes(cfg, prompts, concept_latents is not None))
    trajectories = prepare_data(cfg, runner, prompts, concept_latents, progress)
    irrelevant_x0 = sample_irrelevant(cfg, runner, prompts, progress)
    retain = sample_retain(cfg, runner, prompts, progress)
    data_cost = runner.counter.forward_equivalents
    pathway = pathway_swap_test(runner, prompts, trajectories, cfg.guidance_esd)
    log.info("concept pathway: %s", pathway)
    trainer = ErasureTrainer(cfg, runner, prompts, trajectories, callbacks, irrelevant_x0, retain)
    history = trainer.run()
    c = runner.counter
    cost = {"forwards": c.forwards, "backwards": c.backwards, "forward_equivalents": c.forward_equivalents,
            "data_forward_equivalents": data_cost}
    return TrainResult(lora=runner.lora, concepts=concepts, history=history, cost=cost, pathway=pathway,
                       seconds=time.perf_counter() - start)


def released_schedule_cost(steps: int, sample_steps: int = 28, num_irrelevant: int = 3) -> dict:
    """Transformer passes of the released code's schedule (docs/method.md):
    erase = 28 sampler + 2 no-grad + 2 grad forwards and a backward through both graphs;
    preserve = (1 synonym + K irrelevant) x 28 sampler forwards + 1 grad forward + 1 backward."""
    erase, preserve = (steps + 1) // 2, steps // 2
    forwards = erase * (sample_steps + 4) + preserve * ((1 + num_irrelevant) * sample_steps + 1)
    backwards = erase * 2 + preserve
    return {"forwards": forwards, "backwards": backwards, "forward_equivalents": forwards + 2 * backwards}

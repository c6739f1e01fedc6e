"""The bi-level loop of EraseAnything: alternating erase and preserve steps on one LoRA (Algorithm 1).

erase    (the paper's lower level): Eq. 2 ESD negative guidance + Eq. 3 attention attenuation
preserve (the paper's upper level): Eq. 4 flow matching on the concept latents and on one frozen sample
         per irrelevant concept (D_ir) + Eq. 5 reverse self-contrastive loss against a synonym and K
         irrelevant concepts (weight 0 by default: docs/method.md)

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
from .data import Trajectories, euler_sample, noised, sample_trajectories, trajectories_from_latents
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
class Prompts:
    concept: TextCond                  # the unaugmented concept prompt
    variants: list[TextCond]           # augmented concept prompts, each with its own token positions
    anchor: TextCond
    synonyms: list[TextCond]
    irrelevant: list[TextCond]


@dataclass
class TrainResult:
    lora: torch.nn.Module
    concepts: ConceptSet
    history: list[dict] = field(default_factory=list)
    cost: dict = field(default_factory=dict)
    pathway: dict = field(default_factory=dict)
    seconds: float = 0.0


def encode_prompts(cfg: EraseConfig, concepts: ConceptSet, text: TextEncoder) -> Prompts:
    """Every prompt the run needs, encoded once up front, so the text encoders can leave the GPU."""
    rng = random.Random(cfg.seed)
    variants = [text.encode(concepts.prompt, concepts.concept)]
    for _ in range(cfg.prompt_variants - 1):
        augmented, word = augment_prompt(concepts.prompt, concepts.concept, concepts.synonyms, rng,
                                         cfg.shuffle_p, cfg.synonym_swap_p)
        variants.append(text.encode(augmented, word))
    return Prompts(concept=variants[0], variants=variants, anchor=text.encode(concepts.anchor, None),
                   synonyms=[text.encode(s, s) for s in concepts.synonyms],
                   irrelevant=[text.encode(w, w) for w in concepts.irrelevant])


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
                 callbacks: Callbacks | None = None, irrelevant_x0: torch.Tensor | None = None):
        self.cfg, self.runner, self.prompts, self.traj = cfg, runner, prompts, trajectories
        self.irrelevant_x0 = irrelevant_x0  # (K, c, h, w), one frozen sample per irrelevant concept
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

    def _esd_state(self, i: int, j: int) -> torch.Tensor:
        if self.cfg.esd_sampling == "cached":
            return self.traj.x_t[i, j][None]
        # Original ESD: sample the concept till step j with the current model, from fresh noise.
        noise = torch.randn(self.traj.noise[:1].shape, generator=self.gen)
        with torch.no_grad():
            return euler_sample(lambda x, s: self.runner.velocity(x, s, [self.prompts.concept], self.cfg.guidance_esd),
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
        cfg, p = self.cfg, self.prompts
        i, j = self.rng.randrange(self.traj.num_images), self.rng.randrange(self.traj.steps)
        sigma = float(self.traj.sigmas[j])
        variant = self.rng.choice(p.variants)
        x_t = self._esd_state(i, j).to(self.runner.device)
        stored = self._stored_concept_velocity(i, j)
        refs = [p.anchor] + ([variant] if stored is None else [])
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
        variant = self.rng.choice(p.variants)
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
        block = self.blocks[-1]
        capture = AttentionCapture((block,), [variant.token_idx])
        v_lora = self.runner.velocity(x_t, sigma, [variant], cfg.guidance_train, capture=capture)
        l_fm = losses.flow_matching_loss(_wide(v_lora), _wide(noise.to(v_lora.device)), _wide(x0.to(v_lora.device)))
        values["fm"] = l_fm.item()
        loss = cfg.lambda_fm * l_fm + irrelevant_term
        if cfg.lambda_rsc > 0 and p.synonyms and p.irrelevant:
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


CONCEPT_SAMPLE_BATCH = 4  # concept trajectories sampled per batch


def data_passes(cfg: EraseConfig, n_irrelevant: int, user_latents: bool) -> int:
    """Sampling calls of data generation (each a batch): what DataProgress counts to."""
    concept = 0 if user_latents else -(-cfg.num_images // CONCEPT_SAMPLE_BATCH) * cfg.sample_steps
    irrelevant = cfg.sample_steps if cfg.lambda_preserve_irrelevant > 0 and n_irrelevant else 0
    return concept + irrelevant


def prepare_data(cfg: EraseConfig, runner: Runner, prompts: Prompts,
                 concept_latents: torch.Tensor | None = None, progress: DataProgress | None = None) -> Trajectories:
    """The concept latents D_un with their trajectories, sampled once by the frozen model, or built by
    noising latents the user supplied (model space, (n, c, h, w))."""
    if concept_latents is not None:
        gen = torch.Generator().manual_seed(cfg.seed)
        return trajectories_from_latents(concept_latents.to("cpu", runner.dtype), runner.sigmas(cfg.sample_steps), gen)
    side = cfg.resolution // 8
    gen = torch.Generator().manual_seed(cfg.seed)
    noise = torch.randn((cfg.num_images, runner.latent_channels, side, side), generator=gen)
    sigmas = runner.sigmas(cfg.sample_steps)
    progress = progress or DataProgress(None, 0)
    velocity = progress.counted(f"sampling {cfg.num_images} concept images",
                                lambda x, s: runner.velocity(x, s, [prompts.concept] * x.shape[0], cfg.guidance_esd))
    with torch.no_grad(), runner.lora.disabled():
        return sample_trajectories(velocity, noise.to(runner.device), sigmas, batch_size=CONCEPT_SAMPLE_BATCH,
                                   store_dtype=runner.dtype)


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
    side = cfg.resolution // 8
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    noise = torch.randn((len(prompts.irrelevant), runner.latent_channels, side, side), generator=gen)
    sigmas = runner.sigmas(cfg.sample_steps)
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
    log.info("erasing %r: anchor %r, synonyms %s, irrelevant %s", concepts.concept, concepts.anchor,
             list(concepts.synonyms), list(concepts.irrelevant))
    prompts = encode_prompts(cfg, concepts, text)
    runner.load()
    progress = DataProgress(callbacks, data_passes(cfg, len(prompts.irrelevant), concept_latents is not None))
    trajectories = prepare_data(cfg, runner, prompts, concept_latents, progress)
    irrelevant_x0 = sample_irrelevant(cfg, runner, prompts, progress)
    data_cost = runner.counter.forward_equivalents
    pathway = pathway_swap_test(runner, prompts, trajectories, cfg.guidance_esd)
    log.info("concept pathway: %s", pathway)
    trainer = ErasureTrainer(cfg, runner, prompts, trajectories, callbacks, irrelevant_x0)
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

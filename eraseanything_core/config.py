"""One frozen config for an erasure run: the single home of every default, range and help text.

The node inputs are built from the field metadata (nodes/schema.py): `help` becomes the tooltip,
`min` / `max` / `step` the widget's range, `choices` a combo. `__post_init__` enforces the same ranges,
so a workflow JSON, an API call or a script gets the same refusal as the UI.

Two presets (`PRESETS`): `paper` is the released code's weights and schedule with its bugs fixed (200
steps, lr 1e-3, 8 images, Eq. 4 at 0.1, Eq. 5 at 0.1 on head 0, no retain set); `default` (the field
defaults) is what measured best here (tests/benchmarks/RESULTS.md, "Specificity"): the preserve step
distils the frozen model's velocity on a retain set (each concept prompt with the concept replaced by
each irrelevant concept, the anchor prompts, the user's keep prompts) with Eq. 4 and Eq. 5 off, over 300
steps at lr 2e-3 on 12 concept images. Eq. 5 on head 0 erases, weakly and unevenly across seeds;
averaged over heads it stopped the erasure; neither kept the other concepts as well as the retain set. A field left at its default takes
the preset's value; a field set to anything else wins. docs/method.md says why, with the measurements.
"""

import math
from dataclasses import MISSING, asdict, dataclass, field, fields

TARGET_GROUPS = ("txt_qk", "txt_v", "img_qkv", "single_qk", "all_attn", "vector_in")
REFERENCE_MODES = ("frozen", "lora")
ESD_SAMPLING_MODES = ("cached", "resample")
LORA_DTYPES = ("float32", "bfloat16")
RSC_FEATURES = ("head0", "head_mean")
RSC_ORIENTATIONS = ("released", "paper")
SIGMA_SCHEDULES = ("model", "uniform")
PRESET_NAMES = ("default", "paper")
SEED_MAX = 0xFFFFFFFFFFFFFFFF


def _f(default, help: str, **limits):
    """A field with its help text and limits: min / max (inclusive), gt (exclusive lower bound), step
    (the widget's increment), choices (allowed values; of each item for a tuple), node_choices (what a
    combo offers when it differs: '+' joins the items of a tuple)."""
    return field(default=default, metadata={"help": help, **limits})


@dataclass(frozen=True)
class EraseConfig:
    concept: str = field(metadata={"help": "The word or phrase to erase, e.g. 'nude', 'Van Gogh', 'parachute'."})
    prompt: str = _f("", "Prompts that draw the concept, one per line ('a red circle', 'a red square'); each line gets its "
                         "own anchor and its own concept images. Empty: a few built-in templates around the concept "
                         "('a photo of <concept>', ...).")
    anchor: str | None = _f(None, "What the concept should turn into (ESD anchor, Eq. 2), as whole prompts: one for "
                                  "all prompt lines ('a blue shape'), or one per prompt line. Empty: each prompt line "
                                  "with the concept replaced by anchor_word, or removed when anchor_word is empty.")
    anchor_word: str = _f("", "A word or phrase that replaces the concept in every prompt line to give that line's "
                              "anchor: 'blue' for 'red' turns 'a red circle' into 'a blue circle'. Use it or anchor "
                              "prompts, not both. Empty: the concept is removed from each line. If the erased "
                              "objects break apart instead of changing, leave it empty: a q/k LoRA can make the model "
                              "stop reading the concept, but turns it into a replacement only where the prompt's "
                              "text already carries one.")
    synonyms: tuple[str, ...] = _f((), "Other words for the concept, one per line or comma-separated. Empty: automatic.")
    irrelevant: tuple[str, ...] = _f((), "Unrelated concepts to keep intact, one per line or comma-separated. "
                                         "Empty: automatic (3 at graded distance).")
    keep: tuple[str, ...] = _f((), "Prompts the erasure must not change, one per line (e.g. 'a portrait of a woman'); "
                                   "they join the retain set. They must not contain the concept.")
    num_irrelevant: int = _f(3, "K, the number of irrelevant concepts chosen automatically.", min=1, max=8)

    steps: int = _f(300, "Optimizer steps, alternating erase and preserve (paper preset: 200; the released code "
                         "uses 300 for concepts other than nudity).", min=1, max=10000)
    learning_rate: float = _f(2e-3, "AdamW learning rate, constant (paper preset: 1e-3). Must be above 0.",
                              gt=0.0, max=1.0, step=0.0001)
    weight_decay: float = _f(1e-5, "AdamW weight decay (released code: 1e-5).", min=0.0, max=1.0)
    rank: int = _f(8, "LoRA rank (alpha = rank). Paper: 8.", min=1, max=128)
    seed: int = _f(0, "Same seed, same inputs: the same LoRA.", min=0, max=SEED_MAX)
    erase_steps_per_preserve: int = _f(1, "k erase steps before each preserve step (paper: 1).", min=1, max=16)

    resolution: int = _f(512, "Side in pixels of the concept images the model draws for training.",
                         min=16, max=2048, step=16)
    num_images: int = _f(12, "Concept images sampled once from the frozen model, shared among the prompt lines "
                             "(paper preset: 8).", min=1, max=64)
    sample_steps: int = _f(28, "Euler steps of the concept trajectories.", min=2, max=200)
    esd_sampling: str = _f("cached", "cached: sample concept trajectories once (fast). resample: sample till t "
                                     "with the current model every erase step (original ESD, ~10x slower).",
                           choices=ESD_SAMPLING_MODES)

    guidance_esd: float = _f(3.0, "Guidance embedding of the sampler and ESD passes (released code: 3).", min=0.0, max=100.0)
    guidance_train: float = _f(3.5, "Guidance embedding of teacher-forced passes (released code: 3.5).", min=0.0, max=100.0)
    eta: float = _f(1.0, "ESD negative guidance (Eq. 2): how far past the anchor the concept is pushed.",
                    min=0.0, max=10.0, step=0.1)
    lambda_esd: float = _f(1.0, "Weight of the ESD negative-guidance loss (Eq. 2).", min=0.0, max=100.0, step=0.01)
    lambda_attn: float = _f(1e-3, "Weight of the attention-attenuation loss on the concept tokens (Eq. 3).",
                            min=0.0, max=10.0, step=0.0001)
    lambda_fm: float = _f(0.0, "Weight of the flow-matching loss on the concept images with the concept prompt "
                               "(Eq. 4; paper preset: 0.1). Off by default: it trains the model to keep drawing "
                               "the concept, which the retain set does better for everything else.",
                          min=0.0, max=10.0, step=0.01)
    lambda_rsc: float = _f(0.0, "Weight of the reverse self-contrastive loss (Eq. 5); the paper preset uses 0.1 on "
                                "head 0. Off by default: with the feature averaged over heads it stopped the "
                                "erasure, and on head 0 it erased but kept less of the other concepts than the "
                                "retain set (docs/method.md).", min=0.0, max=10.0, step=0.01)
    lambda_retain: float = _f(3.0, "Weight of distillation on the retain set: the LoRA model's velocity is matched "
                                   "to the frozen model's at states of the retain prompts' own trajectories (each "
                                   "prompt line with the concept replaced by each irrelevant concept and by the "
                                   "anchor, the anchor prompts, the keep prompts). 0 = off.",
                           min=0.0, max=100.0, step=0.1)
    lambda_preserve_irrelevant: float = _f(0.0, "Weight of flow matching on one frozen sample per irrelevant "
                                                "concept (the paper's D_ir; the default before the retain set). "
                                                "0 = off.", min=0.0, max=10.0, step=0.01)
    tau: float = _f(0.07, "Eq. 5 temperature.", gt=0.0, max=10.0)
    rsc_feature: str = _f("head0", "Eq. 5 feature: the image queries' attention on the concept columns of head 0 "
                                   "(the released code) or averaged over all heads (head_mean).",
                          choices=RSC_FEATURES)
    rsc_orientation: str = _f("released", "Eq. 5 form. released: the released code's reversed, non-saturating "
                                          "loss (the synonym as query; the concept pushed from it among the "
                                          "irrelevant concepts). paper: the concept as query, the irrelevant "
                                          "concepts as positives, the synonym as negative (a standard InfoNCE).",
                              choices=RSC_ORIENTATIONS)
    sigma_schedule: str = _f("model", "Noise levels of the concept and retain trajectories, where training draws its "
                                      "states: the model's own sampling schedule (model; FLUX's is shifted toward "
                                      "high noise) or evenly spaced from 1 to 0 (uniform, as the released code draws t).",
                             choices=SIGMA_SCHEDULES)
    attn_blocks: tuple[int, ...] = _f((-1,), "Double blocks read by Eq. 3/5; negative counts from the end.")

    targets: tuple[str, ...] = _f(("txt_qk",), "Which projections get the LoRA. txt_qk is the paper's (text-side "
                                               "q/k of the double blocks); txt_qk+vector_in also erases what the "
                                               "pooled CLIP vector carries.", choices=TARGET_GROUPS,
                                  node_choices=TARGET_GROUPS + ("txt_qk+vector_in",))
    reference: str = _f("frozen", "ESD references from the frozen model (paper, ESD) or from the current LoRA "
                                  "model (released code).", choices=REFERENCE_MODES)
    lora_dtype: str = _f("float32", "Trainable LoRA weights. bfloat16 matches the released code; float32 is "
                                    "more precise.", choices=LORA_DTYPES)
    gradient_checkpointing: bool = _f(False, "Recompute each block in the backward pass: less VRAM, ~30% slower.")

    shuffle_p: float = _f(0.9, "Word shuffle probability of the prompt augmentation (released code).", min=0.0, max=1.0)
    synonym_swap_p: float = _f(0.5, "Synonym replacement probability of the prompt augmentation (released code).",
                               min=0.0, max=1.0)
    prompt_variants: int = _f(16, "Augmented concept prompts encoded up front (shared among the prompt lines).",
                              min=1, max=256)
    preset: str = _f("default", "default: what measured best here (retain-set distillation, Eq. 5 off). paper: the "
                                "released code's weights with its bugs fixed (Eq. 5 on head 0 at 0.1, Eq. 4 at 0.1, "
                                "no retain set). Fields left at their default take the preset's value; fields you "
                                "change win.", choices=PRESET_NAMES)

    def __post_init__(self):
        concept = (self.concept or "").strip()
        if not concept:
            raise ValueError("concept is empty: type the word or phrase to erase, e.g. 'Van Gogh'.")
        if not any(ch.isalnum() for ch in concept):
            raise ValueError(f"concept {concept!r} has no letters or digits: type the word or phrase to erase, "
                             "e.g. 'fire' rather than an emoji.")
        for f in fields(self):
            _check_limits(f.name, getattr(self, f.name), f.metadata)
        for name, value in PRESETS[self.preset].items():  # frozen: set once, here
            if getattr(self, name) == _DEFAULTS[name]:
                object.__setattr__(self, name, value)
        if self.anchor_word.strip() and (self.anchor or "").strip():
            raise ValueError("anchor and anchor_word are both set: give anchor prompts or an anchor word, not both.")
        anchors = len(self.anchor_prompts)
        if anchors > 1 and anchors != len(self.concept_prompts):
            raise ValueError(f"anchor has {anchors} lines for {len(self.concept_prompts)} prompt lines: give one "
                             "anchor prompt for all lines, or one per prompt line.")
        if self.resolution % 16:
            raise ValueError(f"resolution must be a multiple of 16 (VAE x8, patch x2), got {self.resolution}.")
        if not self.targets:
            raise ValueError(f"targets is empty; choose from {TARGET_GROUPS}.")
        if not self.attn_blocks:
            raise ValueError("attn_blocks is empty: name at least one double block, e.g. (-1,) for the last.")

    @property
    def concept_prompts(self) -> tuple[str, ...]:
        """The prompt lines, or the built-in templates around the concept when there are none."""
        lines = _lines(self.prompt)
        concept = " ".join(self.concept.split())
        return lines or tuple(t.format(concept) for t in DEFAULT_PROMPT_TEMPLATES)

    @property
    def anchor_prompts(self) -> tuple[str, ...]:
        return _lines(self.anchor or "")

    def to_metadata(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes) -> "EraseConfig":
        return EraseConfig(**{**asdict(self), **changes})


# Prompts around the concept when the user gives none: offline, deterministic, a few plain contexts.
DEFAULT_PROMPT_TEMPLATES = ("{}", "a photo of {}", "a painting of {}", "a close-up picture of {}")

# What each preset sets; `default` is the field defaults themselves.
PRESETS = {
    "default": {},
    "paper": dict(steps=200, learning_rate=1e-3, num_images=8, lambda_rsc=0.1, rsc_feature="head0",
                  rsc_orientation="released", lambda_fm=0.1, lambda_retain=0.0, lambda_preserve_irrelevant=0.0),
}
_DEFAULTS = {f.name: f.default for f in fields(EraseConfig)}


def _lines(text: str) -> tuple[str, ...]:
    """One item per non-empty line, whitespace collapsed (a prompt may contain commas)."""
    return tuple(" ".join(line.split()) for line in (text or "").splitlines() if line.strip())


def _check_limits(name: str, value, limits: dict):
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if "choices" in limits and v not in limits["choices"]:
            raise ValueError(f"{name}: {v!r} is not one of {limits['choices']}.")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v}.")
        if "gt" in limits and not v > limits["gt"]:
            raise ValueError(f"{name} must be above {limits['gt']}, got {v}.")
        if "min" in limits and v < limits["min"]:
            raise ValueError(f"{name} must be at least {limits['min']}, got {v}.")
        if "max" in limits and v > limits["max"]:
            raise ValueError(f"{name} must be at most {limits['max']}, got {v}.")


def help_of(name: str) -> dict:
    """The metadata of one field (help, limits, choices) and its default: what a node input is built from."""
    for f in fields(EraseConfig):
        if f.name == name:
            return {**f.metadata, "default": "" if f.default is MISSING else f.default}
    raise KeyError(name)

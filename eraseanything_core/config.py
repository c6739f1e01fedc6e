"""One frozen config for an erasure run. Defaults are the released code's (docs/method.md), except two
loss weights of the preserve step: Eq. 5 is off (`lambda_rsc` 0; the released code's 0.1, with its
padding-column bug fixed, stopped the erasure of two of the demo world's three targets) and the irrelevant concepts are
kept by flow matching on their own samples (the paper's D_ir; `lambda_preserve_irrelevant` 1). Both
are measured in tests/benchmarks/RESULTS.md and explained in docs/method.md."""

from dataclasses import asdict, dataclass, field, fields

TARGET_GROUPS = ("txt_qk", "txt_v", "img_qkv", "single_qk", "all_attn", "vector_in")
REFERENCE_MODES = ("frozen", "lora")
ESD_SAMPLING_MODES = ("cached", "resample")
LORA_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class EraseConfig:
    concept: str = field(metadata={"help": "The word or phrase to erase, e.g. 'nude' or 'Van Gogh'."})
    prompt: str = field(default="", metadata={"help": "Prompt that draws the concept; empty = the concept itself."})
    anchor: str | None = field(default=None, metadata={"help": "ESD anchor prompt c_0; None = prompt minus the concept words."})
    synonyms: tuple[str, ...] = field(default=(), metadata={"help": "Other words for the concept; empty = automatic."})
    irrelevant: tuple[str, ...] = field(default=(), metadata={"help": "K unrelated concepts for Eq. 5; empty = automatic."})
    num_irrelevant: int = field(default=3, metadata={"help": "K, the number of irrelevant concepts.", "min": 1, "max": 8})

    steps: int = field(default=200, metadata={"help": "Optimizer steps (erase + preserve).", "min": 1, "max": 10000})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate (constant).", "min": 0.0})
    weight_decay: float = 1e-5
    rank: int = field(default=8, metadata={"help": "LoRA rank; alpha = rank.", "min": 1, "max": 128})
    seed: int = 0
    erase_steps_per_preserve: int = field(default=1, metadata={"help": "k erase steps, then one preserve step.", "min": 1})

    resolution: int = field(default=512, metadata={"help": "Side of the concept images in pixels.", "min": 16})
    num_images: int = field(default=8, metadata={"help": "Concept images sampled once from the frozen model.", "min": 1})
    sample_steps: int = field(default=28, metadata={"help": "Euler steps of the concept trajectories.", "min": 2})
    esd_sampling: str = field(default="cached", metadata={"help": "'cached': x_t is a lookup in the frozen trajectories; 'resample': sample till t with the current model every erase step (original ESD, slow)."})

    guidance_esd: float = 3.0    # guidance embedding of the sampler and ESD passes (released code: 3)
    guidance_train: float = 3.5  # guidance embedding of teacher-forced passes (released code: 3.5)
    eta: float = field(default=1.0, metadata={"help": "ESD negative guidance, Eq. 2."})
    lambda_esd: float = 1.0      # Eq. 2 weight
    lambda_attn: float = 1e-3    # Eq. 3 weight
    lambda_fm: float = 0.1       # Eq. 4 weight
    lambda_rsc: float = 0.0      # Eq. 5 weight (released code: 0.1; off by default, see the module docstring)
    lambda_preserve_irrelevant: float = 1.0  # flow matching on one frozen sample per irrelevant concept (D_ir)
    tau: float = 0.07            # Eq. 5 temperature
    attn_blocks: tuple[int, ...] = field(default=(-1,), metadata={"help": "Double blocks read by Eq. 3/5; negative counts from the end."})

    targets: tuple[str, ...] = field(default=("txt_qk",), metadata={"help": f"LoRA target groups: {', '.join(TARGET_GROUPS)}."})
    reference: str = field(default="frozen", metadata={"help": "ESD references from the 'frozen' model (ESD, paper) or the current 'lora' model (released code)."})
    lora_dtype: str = field(default="float32", metadata={"help": "Trainable LoRA weights: float32 (with autocast) or bfloat16 (released code)."})
    gradient_checkpointing: bool = False

    shuffle_p: float = 0.9       # word shuffle probability (released code)
    synonym_swap_p: float = 0.5  # synonym replacement probability (released code)
    prompt_variants: int = field(default=16, metadata={"help": "Augmented concept prompts encoded up front.", "min": 1})

    def __post_init__(self):
        if not self.concept or not self.concept.strip():
            raise ValueError("concept is empty: type the word or phrase to erase, e.g. 'Van Gogh'.")
        for name in ("steps", "rank", "num_images", "sample_steps", "num_irrelevant", "prompt_variants",
                     "erase_steps_per_preserve"):
            if getattr(self, name) < (2 if name == "sample_steps" else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.resolution % 16:
            raise ValueError(f"resolution must be a multiple of 16 (VAE x8, patch x2), got {self.resolution}.")
        unknown = [t for t in self.targets if t not in TARGET_GROUPS]
        if unknown or not self.targets:
            raise ValueError(f"unknown LoRA target group(s) {unknown or '(none)'}; choose from {TARGET_GROUPS}.")
        for name, allowed in (("reference", REFERENCE_MODES), ("esd_sampling", ESD_SAMPLING_MODES),
                              ("lora_dtype", LORA_DTYPES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if not 0 <= self.shuffle_p <= 1 or not 0 <= self.synonym_swap_p <= 1:
            raise ValueError("shuffle_p and synonym_swap_p are probabilities in [0, 1].")
        if self.tau <= 0:
            raise ValueError(f"tau must be positive, got {self.tau}.")
        if not self.attn_blocks:
            raise ValueError("attn_blocks is empty: name at least one double block, e.g. (-1,) for the last.")

    @property
    def concept_prompt(self) -> str:
        return self.prompt.strip() or self.concept.strip()

    def to_metadata(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes) -> "EraseConfig":
        return EraseConfig(**{**asdict(self), **changes})

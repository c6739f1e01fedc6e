"""The port between the method and a host: what the trainer needs from a model and a text encoder.

The trainer, the data, the losses and the LoRA maths see a model only through `Runner` and the text
only through `TextEncoder`. `comfy/` implements both for ComfyUI's Flux; a unit test implements them
in a few lines of plain torch. Nothing here imports a host.
"""

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class TextCond:
    """One encoded prompt: the T5 stream, the pooled CLIP vector and the concept's token positions."""
    text: str
    context: torch.Tensor          # (1, n_txt, context_dim)
    pooled: torch.Tensor           # (1, vec_dim)
    token_idx: torch.Tensor        # (k,) positions of the concept tokens in the T5 stream


@dataclass
class AttentionCapture:
    """Asks a forward for the attention probabilities of double blocks `blocks` on key columns.

    key_idx holds one (k_b,) index tensor per batch element. After the forward, probs[block] holds
    one (1, h, n, k_b) tensor per batch element. With stop_after set, the forward stops right after
    that block (a truncated pass for references that only need attention).
    """
    blocks: tuple[int, ...]
    key_idx: list[torch.Tensor]
    stop_after: int | None = None
    probs: dict[int, list[torch.Tensor]] = field(default_factory=dict)


@dataclass
class PassCounter:
    """Transformer passes, in samples: a batch of 4 is 4 forwards; a pass that stops after block j of
    J blocks counts (j + 1) / J. A backward is counted separately (2 forward-equivalents by convention)."""
    forwards: float = 0.0
    backwards: float = 0.0

    @property
    def forward_equivalents(self) -> float:
        return self.forwards + 2.0 * self.backwards


class TextEncoder(Protocol):
    def encode(self, text: str, concept_word: str | None) -> TextCond:
        """The prompt encoded, with the T5 positions of `concept_word` (none when it is None)."""

    def embed_pooled(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), dim) pooled text vectors, used to rank candidate concepts."""


class LoRA(Protocol):
    def parameters(self): ...
    def disabled(self):
        """A context in which the model runs without the LoRA (the frozen model)."""


class Runner(Protocol):
    """A model the trainer can run: a velocity call with an optional attention capture, the model's
    sigma schedule, and a count of the passes spent."""
    lora: LoRA
    counter: PassCounter
    device: torch.device
    dtype: torch.dtype            # compute dtype of the base weights
    latent_channels: int
    double_blocks: int            # number of double-stream blocks (Eq. 3/5 read their attention)

    def load(self) -> None:
        """Put the model on its compute device and make its weights usable by autograd."""

    def sigmas(self, steps: int) -> torch.Tensor:
        """steps + 1 sigmas from the model's sigma_max down to 0, on the CPU."""

    def velocity(self, x_t: torch.Tensor, sigma: float, conds: list[TextCond], guidance: float,
                 capture: AttentionCapture | None = None) -> torch.Tensor | None:
        """v (b, c, h, w) for x_t (b, c, h, w) in model space, one cond per sample; None for a pass
        truncated by capture.stop_after."""

    def count_backward(self) -> None:
        """Count a backward through every sample forwarded with grad since the last one."""


def block_index(i: int, depth: int, what: str = "block") -> int:
    """A block index that may count from the end (-1 = last) as a plain index in [0, depth)."""
    j = i + depth if i < 0 else i
    if not 0 <= j < depth:
        raise ValueError(f"{what} {i} does not exist: the model has {depth} double blocks "
                         f"(valid: 0..{depth - 1}, or -1..-{depth} from the end).")
    return j


def token_grid(latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The image-token grid of a latent: Flux packs 2x2 patches and pads odd sides."""
    h, w = latent_hw
    return -(-h // 2), -(-w // 2)

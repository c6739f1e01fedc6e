"""Test helper. Did it erase? Two measurements on fixed noisy states, before and after training.

- ESD gap: Eq. 2's loss with frozen references, i.e. how far the model's concept velocity still is
  from the anchor-pushed target.
- Concept attention mass: the share of the image queries' attention that lands on the concept's
  tokens in the chosen double block (and its map over the image).
"""

from dataclasses import dataclass

import torch

from eraseanything_core import losses
from eraseanything_core.comfy.flux import FluxRunner
from eraseanything_core.runner import AttentionCapture, TextCond, block_index, token_grid


@dataclass
class ErasureMetrics:
    esd: float                # mean Eq. 2 loss over the states
    attention_mass: float     # mean over states and image queries of the attention on the concept tokens
    maps: list[torch.Tensor]  # per state, (h_tok, w_tok) attention on the concept tokens


def erasure_metrics(runner: FluxRunner, concept: TextCond, anchor: TextCond, states: list[tuple[torch.Tensor, float]],
                    guidance: float = 3.0, eta: float = 1.0, block: int = -1) -> ErasureMetrics:
    """states: (x_t (1, c, h, w), sigma) pairs in model space."""
    block = block_index(block, runner.double_blocks)
    n_txt = concept.context.shape[1]
    esd, mass, maps = [], [], []
    with torch.no_grad():
        for x_t, sigma in states:
            x_t = x_t.to(runner.device)
            with runner.lora.disabled():
                v_anchor, v_concept = runner.velocity(x_t.expand(2, -1, -1, -1), sigma, [anchor, concept], guidance).chunk(2)
            capture = AttentionCapture((block,), [concept.token_idx])
            v_lora = runner.velocity(x_t, sigma, [concept], guidance, capture=capture)
            esd.append(losses.esd_loss(v_lora.float(), v_anchor.float(), v_concept.float(), eta).item())
            on_concept = capture.probs[block][0][0, :, n_txt:, :].sum(-1).mean(0)  # (n_img,)
            mass.append(on_concept.mean().item())
            maps.append(on_concept.reshape(token_grid(x_t.shape[-2:])).cpu())
    return ErasureMetrics(sum(esd) / len(esd), sum(mass) / len(mass), maps)

"""The erasure LoRA: low-rank updates on row slices of Flux's fused linears.

The paper tunes diffusers' `add_q_proj` / `add_k_proj` of every double-stream block. In ComfyUI's
(BFL-layout) Flux those are rows [0:H] and [H:2H] of `double_blocks.{i}.txt_attn.qkv.weight`, so a
target here is (weight key, row slice) and the delta is added to that slice only. Each target keeps
its own A and B, exactly as the PEFT file stores them, so export and import are 1:1.
"""

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LoRATarget:
    peft_name: str    # e.g. "transformer.transformer_blocks.3.attn.add_q_proj"
    weight_key: str   # e.g. "double_blocks.3.txt_attn.qkv.weight" (inside the diffusion model)
    row_start: int
    row_len: int
    in_features: int


# group -> (block kind, stream, ((PEFT projection, index of its row block in the fused weight), ...)) rows.
# Row block j of a fused qkv is rows [j*H, (j+1)*H); the vector-in linears are one block each.
_QKV = (("to_q", 0), ("to_k", 1), ("to_v", 2))
TARGET_TABLE = {
    "txt_qk": (("double", "txt", (("add_q_proj", 0), ("add_k_proj", 1))),),
    "txt_v": (("double", "txt", (("add_v_proj", 2),)),),
    "img_qkv": (("double", "img", _QKV),),
    "single_qk": (("single", None, _QKV[:2]),),
    "all_attn": (("double", "txt", (("add_q_proj", 0), ("add_k_proj", 1), ("add_v_proj", 2))),
                 ("double", "img", _QKV), ("single", None, _QKV)),
    "vector_in": (("vector", None, (("linear_1", 0), ("linear_2", 0))),),
}


def _target(kind, stream, i, name, j, H, vec_in_dim) -> LoRATarget:
    if kind == "double":
        return LoRATarget(f"transformer.transformer_blocks.{i}.attn.{name}", f"double_blocks.{i}.{stream}_attn.qkv.weight",
                          j * H, H, H)
    if kind == "single":
        return LoRATarget(f"transformer.single_transformer_blocks.{i}.attn.{name}", f"single_blocks.{i}.linear1.weight",
                          j * H, H, H)
    if vec_in_dim is None:
        raise ValueError("the 'vector_in' target needs a model with a pooled-vector input (vec_in_dim).")
    layer, fan_in = ("in_layer", vec_in_dim) if name == "linear_1" else ("out_layer", H)
    return LoRATarget(f"transformer.time_text_embed.text_embedder.{name}", f"vector_in.{layer}.weight", 0, H, fan_in)


def flux_targets(groups, hidden: int, depth: int, depth_single: int, vec_in_dim: int | None = None) -> list[LoRATarget]:
    """The LoRA targets of the named groups (TARGET_TABLE) on a Flux of the given shape, in a fixed order
    (group, then block kind, then block index, then projection): the order of the LoRA's random init."""
    out: dict[str, LoRATarget] = {}
    for group in groups:
        rows = TARGET_TABLE[group]
        for kind, blocks in (("double", range(depth)), ("single", range(depth_single)), ("vector", (None,))):
            for i in blocks:
                for row_kind, stream, projections in rows:
                    if row_kind != kind:
                        continue
                    for name, j in projections:
                        t = _target(kind, stream, i, name, j, hidden, vec_in_dim)
                        out.setdefault(t.peft_name, t)
    return list(out.values())


class ErasureLoRA(nn.Module):
    """A and B per target; delta W = (alpha / r) * B @ A added to the target's row slice.

    Init as peft's "gaussian": A ~ N(0, 1/r^2), B = 0, so the model starts unchanged.
    `enabled = False` (or `with lora.disabled():`) makes every wrapper return its weight untouched,
    which is how frozen reference passes run through the same forward machinery.
    """

    def __init__(self, targets: list[LoRATarget], rank: int, alpha: float | None = None,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        super().__init__()
        self.targets = list(targets)
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.enabled = True
        self.lora_A = nn.ParameterList()
        self.lora_B = nn.ParameterList()
        for t in self.targets:
            a = torch.randn((rank, t.in_features), generator=generator, dtype=torch.float32) / rank
            self.lora_A.append(nn.Parameter(a.to(device=device, dtype=dtype)))
            self.lora_B.append(nn.Parameter(torch.zeros((t.row_len, rank), device=device, dtype=dtype)))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def weight_keys(self) -> list[str]:
        return sorted({t.weight_key for t in self.targets})

    def delta(self, i: int) -> torch.Tensor:
        """(row_len, in_features) update of target i."""
        return self.scale * (self.lora_B[i] @ self.lora_A[i])

    def wrapper(self, weight_key: str):
        """A function w -> w + delta for ComfyUI's weight-wrapper hook (applied after the cast)."""
        idx = [i for i, t in enumerate(self.targets) if t.weight_key == weight_key]

        def apply(weight: torch.Tensor) -> torch.Tensor:
            if not self.enabled:
                return weight
            out_features = weight.shape[0]
            for i in idx:
                t = self.targets[i]
                pad = (0, 0, t.row_start, out_features - t.row_start - t.row_len)
                weight = weight + nn.functional.pad(self.delta(i).to(weight.dtype), pad)
            return weight

        return apply

    @contextmanager
    def disabled(self):
        previous, self.enabled = self.enabled, False
        try:
            yield self
        finally:
            self.enabled = previous

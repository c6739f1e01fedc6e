"""Attention probabilities restricted to a few key columns, without a full (h, n, n) tensor.

The softmax is still taken over all n keys (so the values are the real attention), but only
`query_chunk` rows of logits exist at a time, and with gradients each chunk is checkpointed so the
backward keeps (b, h, n, k), not (b, h, n, n).
"""

import torch
from einops import einsum
from torch.utils.checkpoint import checkpoint


def _chunk_probs(q_chunk, k, key_idx, scale):
    logits = einsum(q_chunk, k, "b h i d, b h j d -> b h i j") * scale  # (b, h, chunk, n)
    return (logits[..., key_idx] - torch.logsumexp(logits, dim=-1, keepdim=True)).exp()


def key_column_probs(q, k, key_idx, query_chunk: int = 1024):
    """softmax(q k^T / sqrt(d)) over all keys, kept only at the key columns `key_idx`.

    q, k: (b, h, n, d) after RMS-norm and RoPE; key_idx: (k,) long positions in the joint sequence.
    Returns (b, h, n, k) in float32 (the logits are computed in float32 for bf16 inputs).
    """
    dtype = torch.promote_types(q.dtype, torch.float32)
    q, k = q.to(dtype), k.to(dtype)
    scale = q.shape[-1] ** -0.5
    chunks = []
    for q_chunk in q.split(query_chunk, dim=2):
        if torch.is_grad_enabled() and (q_chunk.requires_grad or k.requires_grad):
            chunks.append(checkpoint(_chunk_probs, q_chunk, k, key_idx, scale, use_reentrant=False))
        else:
            chunks.append(_chunk_probs(q_chunk, k, key_idx, scale))
    return torch.cat(chunks, dim=2)

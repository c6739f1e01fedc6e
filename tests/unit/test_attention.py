import pytest
import torch

from eraseanything_core.attention import key_column_probs


def _qk(seed, b=2, h=3, n=37, d=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, n, d, generator=g, dtype=dtype), torch.randn(b, h, n, d, generator=g, dtype=dtype))


@pytest.mark.parametrize("chunk", [1, 5, 1024])
def test_key_column_probs_equal_full_softmax_columns(chunk):
    q, k = _qk(0)
    idx = torch.tensor([3, 10, 11])
    full = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    assert torch.allclose(key_column_probs(q, k, idx, query_chunk=chunk), full[..., idx], atol=1e-14)


def test_chunked_checkpointed_gradient_equals_full_gradient():
    q, k = _qk(1)
    q.requires_grad_(True)
    k.requires_grad_(True)
    idx = torch.tensor([0, 7])
    weights = torch.rand(2, 3, 37, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (key_column_probs(q, k, idx, query_chunk=4) * weights).sum().backward()
    g_chunked = (q.grad.clone(), k.grad.clone())
    q.grad = k.grad = None
    full = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    (full[..., idx] * weights).sum().backward()
    assert torch.allclose(g_chunked[0], q.grad, atol=1e-12) and torch.allclose(g_chunked[1], k.grad, atol=1e-12)


def test_bf16_inputs_give_float32_probabilities():
    q, k = _qk(3, dtype=torch.bfloat16)
    assert key_column_probs(q, k, torch.tensor([1])).dtype == torch.float32

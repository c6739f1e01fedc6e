"""Each loss against a plain, separately written implementation of its formula (loops, no broadcasting)."""

import math

import pytest
import torch

from eraseanything_core import losses


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_esd_loss_matches_formula():
    g = _gen()
    v_lora, v_anchor, v_concept = (torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    for eta in (0.0, 1.0, 2.5):
        total = 0.0
        for a, b, c in zip(v_lora.flatten().tolist(), v_anchor.flatten().tolist(), v_concept.flatten().tolist()):
            total += (a - (b - eta * (c - b))) ** 2
        assert losses.esd_loss(v_lora, v_anchor, v_concept, eta).item() == pytest.approx(total / v_lora.numel(), rel=1e-12)


def test_esd_loss_gradient_flows_only_into_the_lora_branch():
    g = _gen(1)
    v_lora = torch.randn(1, 2, 2, 2, generator=g, requires_grad=True)
    v_anchor = torch.randn(1, 2, 2, 2, generator=g, requires_grad=True)
    losses.esd_loss(v_lora, v_anchor, torch.randn(1, 2, 2, 2, generator=g)).backward()
    assert v_lora.grad is not None and v_anchor.grad is None


def test_attention_attenuation_loss_matches_formula():
    probs = torch.rand(2, 3, 5, 4, generator=_gen(2), dtype=torch.float64)  # (b, h, n, k)
    b, h, n, k = probs.shape
    total = 0.0
    for q in range(n):
        for c in range(k):
            total += math.sqrt(sum(probs[i, j, q, c].item() ** 2 for i in range(b) for j in range(h)))
    assert losses.attention_attenuation_loss(probs).item() == pytest.approx(total, rel=1e-12)


def test_flow_matching_loss_matches_formula():
    g = _gen(3)
    v, noise, x0 = (torch.randn(1, 4, 3, 3, generator=g, dtype=torch.float64) for _ in range(3))
    total = sum((a - (e - x)) ** 2 for a, e, x in zip(v.flatten().tolist(), noise.flatten().tolist(), x0.flatten().tolist()))
    assert losses.flow_matching_loss(v, noise, x0).item() == pytest.approx(total / v.numel(), rel=1e-12)


def _cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_reverse_contrastive_loss_matches_formula(tau):
    g = _gen(4)
    center = torch.rand(2, 6, generator=g, dtype=torch.float64)
    anchor = torch.rand(2, 6, generator=g, dtype=torch.float64)
    negatives = torch.rand(2, 3, 6, generator=g, dtype=torch.float64)
    expected = 0.0
    for i in range(2):
        s0 = _cos(anchor[i].tolist(), center[i].tolist()) / tau
        sn = [_cos(anchor[i].tolist(), n.tolist()) / tau for n in negatives[i]]
        expected += s0 - math.log(math.exp(s0) + sum(math.exp(s) for s in sn))  # log softmax_0, reversed sign
    got = losses.reverse_contrastive_loss(center, anchor, negatives, tau).item()
    assert got == pytest.approx(expected / 2, rel=1e-10)


def test_reverse_contrastive_loss_falls_as_center_turns_away_from_the_anchor():
    anchor = torch.tensor([[1.0, 0.0]])
    negatives = torch.tensor([[[0.0, 1.0]]])
    aligned = losses.reverse_contrastive_loss(torch.tensor([[1.0, 0.0]]), anchor, negatives)
    away = losses.reverse_contrastive_loss(torch.tensor([[0.0, 1.0]]), anchor, negatives)
    assert away < aligned


def test_paper_contrastive_loss_matches_formula():
    """Eq. 5 as the paper describes it: concept query, irrelevant positives, synonym negative."""
    g = _gen(7)
    b, k, m, tau = 2, 3, 5, 0.07
    center, synonym = torch.rand(b, m, generator=g, dtype=torch.float64), torch.rand(b, m, generator=g, dtype=torch.float64)
    irrelevant = torch.rand(b, k, m, generator=g, dtype=torch.float64)

    def cos(u, v):
        dot = sum(x * y for x, y in zip(u, v))
        return dot / (math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v)))

    total = 0.0
    for i in range(b):
        u = center[i].tolist()
        pos = sum(math.exp(cos(u, irrelevant[i, j].tolist()) / tau) for j in range(k))
        neg = math.exp(cos(u, synonym[i].tolist()) / tau)
        total += -math.log(pos / (pos + neg))
    got = losses.paper_contrastive_loss(center, synonym, irrelevant, tau).item()
    assert got == pytest.approx(total / b, rel=1e-10)
    assert got > 0


def test_paper_contrastive_loss_saturates_where_the_released_form_does_not():
    """Once the concept looks like the irrelevant concepts and unlike the synonym, the paper's form has
    (almost) no gradient left; the released reversed form keeps pushing."""
    synonym = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    irrelevant = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.9, 0.1]]], dtype=torch.float64)
    center = torch.tensor([[0.01, 1.0, 0.05]], dtype=torch.float64, requires_grad=True)
    losses.paper_contrastive_loss(center, synonym, irrelevant).backward()
    paper = center.grad.norm().item()
    center.grad = None
    losses.reverse_contrastive_loss(center, synonym, irrelevant).backward()
    assert paper < 1e-3 < center.grad.norm().item()

"""The four loss terms of EraseAnything (paper Eq. 2-5), as pure functions of tensors.

Shapes use the legend in `eraseanything_core/__init__.py`.
"""

import torch
import torch.nn.functional as F


def esd_loss(v_lora_concept, v_ref_anchor, v_ref_concept, eta: float = 1.0):
    """Eq. 2, ESD negative guidance: pull the concept velocity towards anchor - eta * (concept - anchor).

    v_lora_concept: (b, c, h, w) with grad; v_ref_anchor, v_ref_concept: same shape, no grad.
    The released code anchors on `prompt_b` (c_0), not on the empty prompt of vanilla ESD; so do we.
    """
    v_target = v_ref_anchor - eta * (v_ref_concept - v_ref_anchor)
    return F.mse_loss(v_lora_concept, v_target.detach())


def attention_attenuation_loss(concept_probs):
    """Eq. 3, as the released code computes it: sum over query rows and concept key columns of the
    L2 norm over (batch, heads) of the attention probabilities.

    concept_probs: (b, h, n, k), softmax over all n keys, restricted to the concept key columns.
    """
    return torch.linalg.vector_norm(concept_probs, dim=(0, 1)).sum()


def flow_matching_loss(v_pred, noise, x0):
    """Eq. 4, rectified flow: x_t = (1 - sigma) x0 + sigma noise, target velocity noise - x0."""
    return F.mse_loss(v_pred, noise - x0)


def reverse_contrastive_loss(feat_center, feat_anchor, feat_negatives, tau: float = 0.07):
    """Eq. 5 with the released code's (reversed) sign: log softmax of the center among the candidates,
    seen from the synonym anchor. Minimising it pushes the LoRA model's concept attention (center)
    away from the synonym's, relative to K irrelevant concepts.

    feat_center: (b, m) with grad; feat_anchor: (b, m); feat_negatives: (b, K, m). Features are
    L2-normalised here. Returns the batch mean.
    """
    center = F.normalize(feat_center, dim=-1)
    anchor = F.normalize(feat_anchor, dim=-1)
    negatives = F.normalize(feat_negatives, dim=-1)
    candidates = torch.cat([center[:, None], negatives], dim=1)  # (b, 1 + K, m)
    logits = torch.einsum("bm,bjm->bj", anchor, candidates) / tau
    return (logits[:, 0] - torch.logsumexp(logits, dim=1)).mean()


def paper_contrastive_loss(feat_center, feat_synonym, feat_irrelevant, tau: float = 0.07):
    """Eq. 5 oriented as the paper describes it: the LoRA model's concept feature (query) is aligned with
    the K irrelevant concepts' (positives) and pushed away from the synonym's (negative). A standard,
    saturating InfoNCE: -log( sum_k e^{s_k} / (sum_k e^{s_k} + e^{s_syn}) ), s = cos(center, .) / tau;
    its gradient vanishes once the irrelevant concepts win.

    feat_center: (b, m) with grad; feat_synonym: (b, m); feat_irrelevant: (b, K, m). Returns the batch mean.
    """
    center = F.normalize(feat_center, dim=-1)
    synonym = F.normalize(feat_synonym, dim=-1)
    irrelevant = F.normalize(feat_irrelevant, dim=-1)
    s_pos = torch.einsum("bm,bkm->bk", center, irrelevant) / tau          # (b, K)
    s_neg = torch.einsum("bm,bm->b", center, synonym)[:, None] / tau       # (b, 1)
    return (torch.logsumexp(torch.cat([s_pos, s_neg], dim=1), dim=1) - torch.logsumexp(s_pos, dim=1)).mean()

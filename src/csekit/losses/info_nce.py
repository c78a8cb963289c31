"""InfoNCE with cosine similarity (the SimCSE loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from csekit.losses.cosine import check_pair, check_temperature, cosine_matrix


def info_nce(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.05,
    hard_negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE over in-batch negatives, as unsupervised SimCSE computes it.

    Logits ``l_ij = cos(z1_i, z2_j) / T`` (B x B); with hard negatives ``h`` an extra block
    ``cos(z1_i, h_j) / T`` is appended (B x (B + H)). Loss = mean over i of the cross-entropy
    with target i::

        L = -1/B sum_i log( exp(l_ii) / (sum_j exp(l_ij) + sum_j exp(cos(z1_i, h_j) / T)) )

    Relations: with all inputs collinear every logit is 1/T and L = log(B) (log(B + H) with
    hard negatives). Logits are computed in float32 (float64 inputs stay float64).

    Shape:
        z1, z2: (B, d); hard_negatives: (H, d), usually H = B -> scalar
    """
    check_pair(z1, z2)
    check_temperature(temperature)
    logits = cosine_matrix(z1, z2) / temperature
    if hard_negatives is not None:
        logits = torch.cat([logits, cosine_matrix(z1, hard_negatives) / temperature], dim=1)
    target = torch.arange(z1.shape[0], device=z1.device)
    return F.cross_entropy(logits, target)

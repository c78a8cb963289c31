"""InfoNCE with cosine similarity (the SimCSE loss, unsupervised and supervised)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from csekit.losses.cosine import (
    add_own_hard_negative_weight,
    check_hard_negative_weight,
    check_pair,
    check_temperature,
    cosine_matrix,
)


def info_nce(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.05,
    hard_negatives: torch.Tensor | None = None,
    hard_negative_weight: float = 0.0,
) -> torch.Tensor:
    """InfoNCE over in-batch negatives, as SimCSE computes it (both settings).

    Logits ``l_ij = cos(z1_i, z2_j) / T`` (B x B); with hard negatives ``h`` an extra block
    ``cos(z1_i, h_j) / T`` is appended (B x (B + H)). Loss = mean over i of the cross-entropy
    with target i::

        L = -1/B sum_i log( exp(l_ii) / (sum_j exp(l_ij) + sum_j exp(cos(z1_i, h_j) / T + w_ij)) )

    with ``w_ij = hard_negative_weight`` when ``j == i`` and 0 otherwise: supervised SimCSE
    (z2 = f(entailed), h = f(contradicted)) adds its ``hard_negative_weight`` w in log space to
    each row's own hard negative, column ``B + i`` (its default 0 means weight 1). With w != 0
    the first B rows of ``h`` must be row-aligned with z1 (``h_i`` is example i's own hard
    negative); further rows (ClusterNS' centroid block after the NLI block) get no weight.

    Relations: with all inputs collinear every logit is 1/T and L = log(B) (log(B + H) with
    hard negatives; ``log(B + H - 1 + e^w)`` with a weight). Logits are computed in float32
    (float64 inputs stay float64).

    Shape:
        z1, z2: (B, d); hard_negatives: (H, d), usually H = B (H >= B when w != 0) -> scalar
    """
    check_pair(z1, z2)
    check_temperature(temperature)
    w = check_hard_negative_weight(hard_negative_weight)
    logits = cosine_matrix(z1, z2) / temperature
    if hard_negatives is not None:
        logits = torch.cat([logits, cosine_matrix(z1, hard_negatives) / temperature], dim=1)
        logits = add_own_hard_negative_weight(logits, w)
    target = torch.arange(z1.shape[0], device=z1.device)
    return F.cross_entropy(logits, target)

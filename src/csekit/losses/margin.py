"""Bidirectional margin loss on likely false negatives (ClusterNS)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from csekit.losses.cosine import check_pair, cosine_matrix

BML_REDUCTIONS: tuple[str, ...] = ("all", "pairs")  # "all": the published mean over B x B


def bidirectional_margin_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    false_negative_mask: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    reduction: Literal["all", "pairs"] = "all",
) -> torch.Tensor:
    """ClusterNS' bidirectional margin loss (BML).

    ``D_ij = m_ij * (cos(z1_i, z2_j) - cos(z1_i, z2_i))`` and the per-pair term
    ``ReLU(D_ij + alpha) + ReLU(-D_ij - beta)``, which is zero when
    ``-beta <= D_ij <= -alpha``: a false negative should be a bit less similar than the
    positive, but not pushed away like a true negative.

    ``reduction="all"`` (the published code, default): mean over all B x B entries. Entries
    outside the mask have D = 0 and contribute the constant ``ReLU(alpha) + ReLU(-beta)``
    (no gradient), so the gradient is that of the pair mean scaled by (#pairs / B^2).
    ``reduction="pairs"`` (clean alternative): mean over the masked pairs only (0 without pairs).

    Shape:
        z1, z2: (B, d); false_negative_mask: (B, B) bool -> scalar
    """
    check_pair(z1, z2)
    b = z1.shape[0]
    if false_negative_mask.shape != (b, b):
        raise ValueError(
            f"false_negative_mask must be ({b}, {b}), got {tuple(false_negative_mask.shape)}"
        )
    s = cosine_matrix(z1, z2)
    m = false_negative_mask.to(device=s.device, dtype=s.dtype)
    d = m * (s - s.diagonal().unsqueeze(1))
    term = F.relu(d + alpha) + F.relu(-d - beta)
    if reduction == "all":
        return term.mean()
    if reduction == "pairs":
        return (term * m).sum() / m.sum().clamp(min=1.0)
    raise ValueError(f"reduction must be 'all' or 'pairs', got {reduction!r}")

"""Focal-InfoNCE (Hou and Li, Findings of EMNLP 2023)."""

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


def focal_info_nce(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.05,
    margin: float = 0.3,
    hard_negatives: torch.Tensor | None = None,
    hard_negative_weight: float = 0.0,
) -> torch.Tensor:
    """Self-paced InfoNCE: positives ``s_ii^2 / T``, negatives ``(s_ij + m) s_ij / T``.

    With ``s_ij = cos(z1_i, z2_j)``, the logits are ``s_ii * s_ii / T`` on the diagonal and
    ``(s_ij + m) * s_ij / T`` off it; a hard-negative block ``cos(z1_i, h_j)`` is modulated like
    any negative (the modulation applies to every negative logit, the hard-negative block
    included). ``hard_negative_weight`` w is then added in log space to row i's own hard
    negative, column ``B + i``, after the modulation, exactly as in :func:`info_nce` (the first
    B rows of ``hard_negatives`` must be row-aligned with z1 when w != 0). Then cross-entropy
    with target i, mean over the batch. The modulation factors are not detached (gradients flow
    through them), as in the published code.

    Relations:
      * a negative at ``s = 1 - m`` gets exactly its InfoNCE logit ``s / T``; negatives with
        ``s > 1 - m`` are up-weighted and those with ``0 < s < 1 - m`` down-weighted;
      * a positive at ``s = 1`` (or 0) gets its InfoNCE logit;
      * the negative logit is a parabola in s with its minimum at ``s = -m / 2``, so negatives
        are pushed toward -0.15 (m = 0.3), not toward -1 (a quirk of the published loss);
      * collinear inputs: ``L = log(1 + (B - 1) exp(m / T))`` (``B + H - 1`` with hard negatives).

    Shape:
        z1, z2: (B, d); hard_negatives: (H, d) (H >= B when w != 0) -> scalar
    """
    check_pair(z1, z2)
    check_temperature(temperature)
    w = check_hard_negative_weight(hard_negative_weight)
    s = cosine_matrix(z1, z2)
    eye = torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    logits = torch.where(eye, s * s, (s + margin) * s) / temperature
    if hard_negatives is not None:
        h = cosine_matrix(z1, hard_negatives)
        logits = torch.cat([logits, (h + margin) * h / temperature], dim=1)
        logits = add_own_hard_negative_weight(logits, w)
    target = torch.arange(z1.shape[0], device=z1.device)
    return F.cross_entropy(logits, target)

"""Focal-InfoNCE objective."""

from __future__ import annotations

import torch

from csekit.losses import focal_info_nce
from csekit.losses.cosine import check_hard_negative_weight, check_margin, check_temperature
from csekit.objectives.base import Objective, ObjectiveOutput


class FocalInfoNCE(Objective):
    """Focal-InfoNCE over the global batch: positives ``s_ii^2/T``, negatives ``(s_ij+m) s_ij/T``.

    See :func:`csekit.losses.focal_info_nce` for the maths and its quirks. Supervised (``z3``
    given): the NLI hard negatives form a second B x B block, modulated like every other
    negative, and ``hard_negative_weight`` is added to row i's own hard negative after the
    modulation. Supervised Focal-InfoNCE is csekit's own: the published code reads a third
    column and never uses it, and no supervised Focal numbers are published.

    Shape:
        z1, z2, z3: (b_local, d) -> ObjectiveOutput with a scalar loss
    """

    name = "focal"

    def __init__(self, temperature: float = 0.05, margin: float = 0.3,
                 hard_negative_weight: float = 0.0) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.margin = check_margin(margin)
        self.hard_negative_weight = check_hard_negative_weight(hard_negative_weight)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor,
                z3: torch.Tensor | None = None) -> ObjectiveOutput:
        g1, g2, g3 = self.gather(z1, z2, z3)
        loss = focal_info_nce(g1, g2, temperature=self.temperature, margin=self.margin,
                              hard_negatives=g3, hard_negative_weight=self.hard_negative_weight)
        pos, neg = self.pair_stats(g1, g2)
        return ObjectiveOutput(loss, {"pos_cos": pos, "neg_cos": neg,
                                      **self.triplet_stats(g1, g2, g3)})

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, margin={self.margin}, "
                f"hard_negative_weight={self.hard_negative_weight}")

"""Focal-InfoNCE objective."""

from __future__ import annotations

import torch

from csekit.losses import focal_info_nce
from csekit.losses.cosine import check_margin, check_temperature
from csekit.objectives.base import Objective, ObjectiveOutput


class FocalInfoNCE(Objective):
    """Focal-InfoNCE over the global batch: positives ``s_ii^2/T``, negatives ``(s_ij+m) s_ij/T``.

    See :func:`csekit.losses.focal_info_nce` for the maths and its quirks.

    Shape:
        z1, z2: (b_local, d) -> ObjectiveOutput with a scalar loss
    """

    name = "focal"

    def __init__(self, temperature: float = 0.05, margin: float = 0.3) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.margin = check_margin(margin)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> ObjectiveOutput:
        g1, g2 = self.gather(z1, z2)
        loss = focal_info_nce(g1, g2, temperature=self.temperature, margin=self.margin)
        pos, neg = self.pair_stats(g1, g2)
        return ObjectiveOutput(loss, {"pos_cos": pos, "neg_cos": neg})

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, margin={self.margin}"

"""Unsupervised SimCSE objective."""

from __future__ import annotations

import torch

from csekit.losses import info_nce
from csekit.losses.cosine import check_temperature
from csekit.objectives.base import Objective, ObjectiveOutput


class SimCSE(Objective):
    """InfoNCE over the global batch: logits ``cos(z1_i, z2_j) / T``, target i.

    Stats: ``pos_cos`` (mean cos(z1_i, z2_i)), ``neg_cos`` (mean off-diagonal cos(z1_i, z2_j)).

    Shape:
        z1, z2: (b_local, d) -> ObjectiveOutput with a scalar loss
    """

    name = "simcse"

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> ObjectiveOutput:
        g1, g2 = self.gather(z1, z2)
        loss = info_nce(g1, g2, temperature=self.temperature)
        pos, neg = self.pair_stats(g1, g2)
        return ObjectiveOutput(loss, {"pos_cos": pos, "neg_cos": neg})

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

"""SimCSE objective: unsupervised (two dropout views) or supervised (NLI triplets)."""

from __future__ import annotations

import torch

from csekit.losses import info_nce
from csekit.losses.cosine import check_hard_negative_weight, check_temperature
from csekit.objectives.base import Objective, ObjectiveOutput


class SimCSE(Objective):
    """InfoNCE over the global batch: logits ``cos(z1_i, z2_j) / T``, target i.

    Supervised (``z3`` given, SimCSE's NLI setting): logits ``cos(z1_i, [z2; z3]_j) / T``
    (B x 2B over the global batch), target i, with ``hard_negative_weight`` added in log space
    to row i's own hard negative (column B + i); see :func:`csekit.losses.info_nce`.

    Stats: ``pos_cos`` (mean cos(z1_i, z2_i)), ``neg_cos`` (mean off-diagonal cos(z1_i, z2_j));
    with z3 also ``triplet_neg_cos`` and ``triplet_margin`` (:meth:`Objective.triplet_stats`).

    Shape:
        z1, z2, z3: (b_local, d) -> ObjectiveOutput with a scalar loss
    """

    name = "simcse"

    def __init__(self, temperature: float = 0.05, hard_negative_weight: float = 0.0) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.hard_negative_weight = check_hard_negative_weight(hard_negative_weight)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor,
                z3: torch.Tensor | None = None) -> ObjectiveOutput:
        g1, g2, g3 = self.gather(z1, z2, z3)
        loss = info_nce(g1, g2, temperature=self.temperature, hard_negatives=g3,
                        hard_negative_weight=self.hard_negative_weight)
        pos, neg = self.pair_stats(g1, g2)
        return ObjectiveOutput(loss, {"pos_cos": pos, "neg_cos": neg,
                                      **self.triplet_stats(g1, g2, g3)})

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, hard_negative_weight={self.hard_negative_weight}"

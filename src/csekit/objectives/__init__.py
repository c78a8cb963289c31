"""Objectives as modules: ``forward(z1_local, z2_local) -> ObjectiveOutput``.

The loss is that of the global batch (the objectives gather across processes themselves).
"""

from csekit.objectives.base import Objective, ObjectiveOutput
from csekit.objectives.clusterns import ClusterNS, ClusterNSFocal, clusterns_loss
from csekit.objectives.factory import OBJECTIVES, build_objective
from csekit.objectives.focal import FocalInfoNCE
from csekit.objectives.simcse import SimCSE

__all__ = [
    "OBJECTIVES",
    "ClusterNS",
    "ClusterNSFocal",
    "FocalInfoNCE",
    "Objective",
    "ObjectiveOutput",
    "SimCSE",
    "build_objective",
    "clusterns_loss",
]

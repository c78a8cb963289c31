"""Centroid maths with no gradients: initialisation, cosine assignment, momentum update,
hard negatives and false-negative masks, and the distributed-consistent :class:`ClusterState`.
"""

from csekit.clustering.assign import assign, false_negative_mask, hard_negatives, nearest_two
from csekit.clustering.init import greedy_chain_init, kmeanspp_init
from csekit.clustering.state import ClusterState
from csekit.clustering.update import apply_momentum, cluster_sums, momentum_update

__all__ = [
    "ClusterState",
    "apply_momentum",
    "assign",
    "cluster_sums",
    "false_negative_mask",
    "greedy_chain_init",
    "hard_negatives",
    "kmeanspp_init",
    "momentum_update",
    "nearest_two",
]

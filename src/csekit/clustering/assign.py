"""Cosine assignment of embeddings to centroids, hard negatives and false-negative masks."""

from __future__ import annotations

import torch

from csekit.losses.cosine import cosine_matrix


@torch.no_grad()
def assign(z: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the most cosine-similar centroid of each row (first one on ties).

    Shape:
        z: (B, d), centroids: (k, d) -> (B,) int64
    """
    return cosine_matrix(z.detach(), centroids).argmax(dim=1)


@torch.no_grad()
def nearest_two(z: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest and second-nearest centroid (by cosine) of each row.

    Shape:
        z: (B, d), centroids: (k, d), k >= 2 -> ((B,), (B,)) int64
    """
    if centroids.shape[0] < 2:
        raise ValueError("nearest_two needs at least 2 centroids")
    sim = cosine_matrix(z.detach(), centroids)
    first = sim.argmax(dim=1)
    sim.scatter_(1, first.unsqueeze(1), float("-inf"))
    return first, sim.argmax(dim=1)


@torch.no_grad()
def hard_negatives(z: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """ClusterNS hard negatives: the second-nearest centroid of each row (detached).

    Shape:
        z: (B, d), centroids: (k, d) -> (B, d) in the centroids' dtype
    """
    _, second = nearest_two(z, centroids)
    return centroids[second].detach()


@torch.no_grad()
def false_negative_mask(assignments: torch.Tensor) -> torch.Tensor:
    """``m_ij = True`` iff samples i and j share the nearest centroid and i != j.

    Shape:
        assignments: (B,) int -> (B, B) bool
    """
    same = assignments.unsqueeze(0) == assignments.unsqueeze(1)
    same.fill_diagonal_(False)
    return same

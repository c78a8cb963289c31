"""Online momentum update of the centroids (ClusterNS' modified K-means)."""

from __future__ import annotations

from typing import Literal

import torch

from csekit.clustering.assign import assign

UpdateRule = Literal["sum", "mean"]
UPDATE_RULES: tuple[str, ...] = ("sum", "mean")  # "sum": the released ClusterNS code


@torch.no_grad()
def cluster_sums(z: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster sum of the member rows (cosine assignment) and member counts.

    These are the quantities that are all-reduced across processes before the update.

    Shape:
        z: (B, d), centroids: (k, d) -> sums (k, d) float32, counts (k,) float32
    """
    idx = assign(z, centroids)
    k = centroids.shape[0]
    sums = torch.zeros(k, z.shape[1], dtype=torch.float32, device=centroids.device)
    sums.index_add_(0, idx.to(centroids.device), z.detach().float().to(centroids.device))
    counts = torch.bincount(idx, minlength=k).float().to(centroids.device)
    return sums, counts


@torch.no_grad()
def apply_momentum(
    centroids: torch.Tensor,
    sums: torch.Tensor,
    counts: torch.Tensor,
    *,
    lr: float,
    rule: UpdateRule = "sum",
) -> torch.Tensor:
    """``c <- lr * x + (1 - lr) * c`` for each non-empty cluster; empty clusters unchanged.

    ``rule="sum"`` (faithful default): x = sum of the members (never normalised, as in the
    published code, so a cluster's norm grows with its size). ``rule="mean"`` (clean
    alternative): x = mean of the members.

    Shape:
        centroids, sums: (k, d), counts: (k,) -> (k, d) float32 (a new tensor)
    """
    c = centroids.float()
    if rule == "sum":
        x = sums
    elif rule == "mean":
        x = sums / counts.clamp(min=1.0).unsqueeze(1)
    else:
        raise ValueError(f"rule must be 'sum' or 'mean', got {rule!r}")
    updated = lr * x + (1.0 - lr) * c
    return torch.where((counts > 0).unsqueeze(1), updated, c)


@torch.no_grad()
def momentum_update(
    centroids: torch.Tensor, z: torch.Tensor, *, lr: float, rule: UpdateRule = "sum"
) -> torch.Tensor:
    """Assign each row of ``z`` to its most cosine-similar centroid, then momentum-update.

    ``c <- lr * (sum of member z) + (1 - lr) * c`` for each non-empty cluster (ClusterNS;
    ``rule="mean"`` uses the member mean instead). Returns new float32 centroids.

    Shape:
        centroids: (k, d), z: (B, d) -> (k, d) float32
    """
    sums, counts = cluster_sums(z, centroids)
    return apply_momentum(centroids, sums, counts, lr=lr, rule=rule)

"""Centroid initialisation from one (global) batch."""

from __future__ import annotations

import torch

from csekit.losses.cosine import cosine_matrix


@torch.no_grad()
def greedy_chain_init(
    z1: torch.Tensor, z2: torch.Tensor, n_clusters: int, *, first_index: int
) -> torch.Tensor:
    """ClusterNS' initialisation (faithful): a greedy chain on the z1-z2 cosine matrix.

    Centroid 0 is ``z1[first_index]``; each next index is ``argmin_j cos(z1[prev], z2_j)`` over
    the not-yet-chosen j, and the centroid is ``z1`` at that index. This is not k-means++: it
    only looks at the previous centroid's row.

    Shape:
        z1, z2: (B, d), n_clusters <= B -> (n_clusters, d) float32
    """
    b = z1.shape[0]
    if not 1 <= n_clusters <= b:
        raise ValueError(
            f"greedy_chain_init needs 1 <= n_clusters <= batch ({b}), got {n_clusters}"
        )
    sim = cosine_matrix(z1.detach(), z2.detach())
    chosen = torch.zeros(b, dtype=torch.bool, device=sim.device)
    order = [int(first_index)]
    chosen[order[0]] = True
    for _ in range(1, n_clusters):
        row = sim[order[-1]].masked_fill(chosen, float("inf"))
        nxt = int(row.argmin())
        order.append(nxt)
        chosen[nxt] = True
    idx = torch.tensor(order, device=z1.device)
    return z1.detach()[idx].float().clone()


@torch.no_grad()
def kmeanspp_init(z: torch.Tensor, n_clusters: int, *, generator: torch.Generator) -> torch.Tensor:
    """Clean alternative: k-means++ seeding with cosine distance ``1 - cos``.

    The first centroid is a uniformly drawn row; each next one is drawn with probability
    proportional to the squared cosine distance to its nearest chosen centroid (uniformly among
    the unchosen rows if all distances are 0). ``generator`` is a CPU generator.

    Shape:
        z: (B, d), n_clusters <= B -> (n_clusters, d) float32
    """
    b = z.shape[0]
    if not 1 <= n_clusters <= b:
        raise ValueError(f"kmeanspp_init needs 1 <= n_clusters <= batch ({b}), got {n_clusters}")
    zf = z.detach().float()
    sim = cosine_matrix(zf, zf).cpu()
    chosen = torch.zeros(b, dtype=torch.bool)
    first = int(torch.randint(b, (1,), generator=generator))
    order = [first]
    chosen[first] = True
    best = sim[first].clone()
    for _ in range(1, n_clusters):
        w = (1.0 - best).clamp(min=0.0) ** 2
        w[chosen] = 0.0
        if float(w.sum()) <= 0.0:
            w = (~chosen).float()
        nxt = int(torch.multinomial(w.double(), 1, generator=generator))
        order.append(nxt)
        chosen[nxt] = True
        best = torch.maximum(best, sim[nxt])
    return zf[torch.tensor(order, device=z.device)].clone()

"""ClusterNS (Deng et al., Findings of ACL 2023), with an InfoNCE or a Focal-InfoNCE core.

Supervised ClusterNS (NLI triplets, ``z3`` given) is csekit's own combination, not a published
method: ClusterNS is unsupervised only. The NLI hard negatives f(hard_neg) and the cluster hard
negatives (second-nearest centroids) both join the denominator, logits
``[cos(z1_i, z2_j) | cos(z1_i, z3_j) | cos(z1_i, c_j)] / T`` (B x 3B), target i, SimCSE's
``hard_negative_weight`` on column B + i; clustering (start test, assignment, update, false-
negative mask, BML) runs on z1 and z2 exactly as in the unsupervised method.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch

from csekit import distributed as dist
from csekit.clustering import ClusterState, false_negative_mask, nearest_two
from csekit.clustering.state import INIT_METHODS
from csekit.clustering.update import UPDATE_RULES
from csekit.errors import ConfigError
from csekit.losses import bidirectional_margin_loss, cosine_matrix, focal_info_nce, info_nce
from csekit.losses.cosine import check_hard_negative_weight, check_margin, check_temperature
from csekit.losses.margin import BML_REDUCTIONS
from csekit.objectives.base import Objective, ObjectiveOutput

logger = logging.getLogger(__name__)

LossKind = Literal["infonce", "focal"]
LOSS_KINDS: tuple[str, ...] = ("infonce", "focal")


@dataclass
class _Terms:
    loss: torch.Tensor
    nearest: torch.Tensor  # (B,) int64
    second: torch.Tensor  # (B,) int64, the hard-negative centroid of each row
    mask: torch.Tensor  # (B, B) bool
    hard_neg: torch.Tensor | None  # (B, d) float32
    bml: torch.Tensor | None  # scalar


def _negative_block(z3: torch.Tensor | None, hn: torch.Tensor | None) -> torch.Tensor | None:
    """The extra negatives after the in-batch block: NLI hard negatives first (row-aligned,
    so ``hard_negative_weight`` lands on column B + i), then the centroid hard negatives."""
    blocks = [x for x in (z3, hn) if x is not None]
    return torch.cat(blocks) if len(blocks) > 1 else (blocks[0] if blocks else None)


def _core_loss(z1: torch.Tensor, z2: torch.Tensor, negatives: torch.Tensor | None, *,
               loss: LossKind, temperature: float, margin: float,
               hard_negative_weight: float, weighted: bool) -> torch.Tensor:
    w = hard_negative_weight if weighted else 0.0
    if loss == "infonce":
        return info_nce(z1, z2, temperature=temperature, hard_negatives=negatives,
                        hard_negative_weight=w)
    return focal_info_nce(z1, z2, temperature=temperature, margin=margin,
                          hard_negatives=negatives, hard_negative_weight=w)


def _cluster_terms(
    z1: torch.Tensor,
    z2: torch.Tensor,
    centroids: torch.Tensor,
    *,
    z3: torch.Tensor | None = None,
    hard_negative_weight: float = 0.0,
    loss: LossKind,
    temperature: float,
    margin: float,
    hard_negatives: bool,
    bml_weight: float,
    alpha: float,
    beta: float,
    bml_reduction: Literal["all", "pairs"],
) -> _Terms:
    nearest, second = nearest_two(z1, centroids)
    mask = false_negative_mask(nearest)
    hn = centroids[second].detach() if hard_negatives else None
    total = _core_loss(z1, z2, _negative_block(z3, hn), loss=loss, temperature=temperature,
                       margin=margin, hard_negative_weight=hard_negative_weight,
                       weighted=z3 is not None)
    bml = None
    if bml_weight != 0:
        bml = bidirectional_margin_loss(
            z1, z2, mask, alpha=alpha, beta=beta, reduction=bml_reduction
        )
        total = total + bml_weight * bml
    return _Terms(total, nearest, second, mask, hn, bml)


def clusterns_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    centroids: torch.Tensor,
    *,
    temperature: float = 0.05,
    bml_weight: float = 1e-4,
    alpha: float = 0.2,
    beta: float = 0.5,
    z3: torch.Tensor | None = None,
    hard_negative_weight: float = 0.0,
) -> torch.Tensor:
    """The ClusterNS loss for given (already updated) centroids; no state, no update.

    Hard negative of i: the second-nearest centroid (cosine) of ``z1_i``, detached. Logits
    ``[cos(z1_i, z2_j)/T | cos(z1_i, hn_j)/T]`` (B x 2B), cross-entropy with target i, plus
    ``bml_weight * BML`` where the false negatives are the pairs i != j whose z1 share the
    nearest centroid and BML is averaged over all B x B entries (the published reduction).

    Supervised (csekit's own combination): with ``z3`` (row i = example i's NLI hard negative)
    the logits are ``[cos(z1_i, z2_j) | cos(z1_i, z3_j) | cos(z1_i, hn_j)] / T`` (B x 3B) and
    ``hard_negative_weight`` is added to column B + i.

    Shape:
        z1, z2, z3: (B, d); centroids: (k, d), k >= 2 -> scalar
    """
    return _cluster_terms(
        z1,
        z2,
        centroids,
        z3=z3,
        hard_negative_weight=check_hard_negative_weight(hard_negative_weight),
        loss="infonce",
        temperature=temperature,
        margin=0.0,
        hard_negatives=True,
        bml_weight=bml_weight,
        alpha=alpha,
        beta=beta,
        bml_reduction="all",
    ).loss


class ClusterNS(Objective):
    """ClusterNS with its whole lifecycle, on the global batch.

    Before clustering starts, each step is plain SimCSE (or Focal-InfoNCE with ``loss="focal"``)
    and the mean of the whole B x B matrix cos(z1_i, z2_j) (diagonal included) is compared with
    ``kmeans_start_cosine``; the first time it is <=, the centroids are initialised from that
    batch (that step still uses the plain loss). On every later step: (1) momentum update of the
    centroids with the detached z1 (``c <- lr * sum(members) + (1 - lr) * c``); (2) with the
    updated centroids, hard negatives (second-nearest centroid) and the false-negative mask
    (same nearest centroid, i != j); (3) loss = CE over ``[z2 | hard negatives]`` +
    ``bml_weight * BML``.

    Options beyond the published ones: ``hard_negatives=False`` drops the centroid block;
    ``bml_weight=0`` drops the margin loss; ``update_rule="mean"`` uses the member mean instead
    of the (faithful) sum; ``bml_reduction="pairs"`` averages BML over the false-negative pairs
    instead of all B^2 entries; ``init="kmeans++"`` replaces the greedy chain.

    Distributed: the start decision is broadcast from rank 0, initialisation happens on rank 0
    and is broadcast, update sums and counts are all-reduced, so the centroids are identical on
    every process by construction. ``state_dict()`` holds ``clusters.centroids`` (float32) and
    ``clusters.started``; the random first index comes from a generator seeded with ``seed`` at
    initialisation time, so a run resumed before the start continues exactly as well.

    Supervised (``z3`` given; csekit's own combination, see the module docstring): the NLI
    hard-negative block joins the loss before and after the start (B x 2B before, B x 3B with
    the centroid block after), ``hard_negative_weight`` on column B + i; clustering still runs
    on z1 (and the start test on the z1-z2 matrix), false negatives still go to BML only.

    Stats: pos_cos, neg_cos, started, n_false_neg (ordered pairs), and once started
    hard_neg_cos, cluster_size_min (non-empty clusters), cluster_size_max, clusters_empty, bml;
    with z3 also triplet_neg_cos and triplet_margin.

    Shape:
        z1, z2, z3: (b_local, d) -> ObjectiveOutput with a scalar loss
    """

    name = "clusterns"

    def __init__(
        self,
        temperature: float = 0.05,
        *,
        loss: LossKind = "infonce",
        margin: float = 0.3,
        n_clusters: int = 128,
        kmeans_lr: float = 1e-3,
        kmeans_start_cosine: float = 0.4,
        hard_negatives: bool = True,
        bml_weight: float = 1e-4,
        alpha: float = 0.2,
        beta: float = 0.5,
        update_rule: Literal["sum", "mean"] = "sum",
        bml_reduction: Literal["all", "pairs"] = "all",
        init: Literal["greedy_chain", "kmeans++"] = "greedy_chain",
        seed: int = 0,
        hard_negative_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.hard_negative_weight = check_hard_negative_weight(hard_negative_weight)
        if loss not in LOSS_KINDS:
            raise ConfigError(f"loss={loss!r} is not known; use 'infonce' or 'focal'")
        self.loss = loss
        self.margin = check_margin(margin) if loss == "focal" else float(margin)
        if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or n_clusters < 2:
            raise ConfigError(
                f"n_clusters must be an integer >= 2 (got {n_clusters!r}); "
                "the published value is 128"
            )
        if not isinstance(kmeans_lr, (int, float)) or not 0 < kmeans_lr <= 1:
            raise ConfigError(
                f"kmeans_lr must be in (0, 1] (got {kmeans_lr!r}); the published value is 1e-3"
            )
        if not isinstance(kmeans_start_cosine, (int, float)) or not -1 <= kmeans_start_cosine <= 1:
            raise ConfigError(
                f"kmeans_start_cosine must be in [-1, 1] (got {kmeans_start_cosine!r}); "
                "the published value is 0.4"
            )
        if (
            not isinstance(bml_weight, (int, float))
            or not bml_weight >= 0
            or math.isinf(bml_weight)
        ):
            raise ConfigError(
                f"bml_weight must be a finite number >= 0 (got {bml_weight!r}); "
                "0 disables the margin loss"
            )
        for key, val in (("alpha", alpha), ("beta", beta)):
            if not isinstance(val, (int, float)) or not math.isfinite(val):
                raise ConfigError(f"{key} must be a finite number (got {val!r})")
        for key, val, allowed in (("update_rule", update_rule, UPDATE_RULES),
                                  ("bml_reduction", bml_reduction, BML_REDUCTIONS),
                                  ("init", init, INIT_METHODS)):
            if val not in allowed:
                raise ConfigError(f"{key}={val!r} is not known; use one of "
                                  f"{', '.join(allowed)} (the first is the published one)")
        self.n_clusters = n_clusters
        self.kmeans_lr = float(kmeans_lr)
        self.kmeans_start_cosine = float(kmeans_start_cosine)
        self.hard_negatives = bool(hard_negatives)
        self.bml_weight = float(bml_weight)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.update_rule = update_rule
        self.bml_reduction = bml_reduction
        self.clusters = ClusterState(n_clusters, init=init, seed=seed)

    @property
    def started(self) -> bool:
        return self.clusters.is_started

    @property
    def centroids(self) -> torch.Tensor:
        return self.clusters.centroids

    def _plain_loss(self, g1: torch.Tensor, g2: torch.Tensor,
                    g3: torch.Tensor | None) -> torch.Tensor:
        return _core_loss(g1, g2, g3, loss=self.loss, temperature=self.temperature,
                          margin=self.margin, hard_negative_weight=self.hard_negative_weight,
                          weighted=g3 is not None)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor,
                z3: torch.Tensor | None = None) -> ObjectiveOutput:
        g1, g2, g3 = self.gather(z1, z2, z3)
        pos, neg = self.pair_stats(g1, g2)
        triplet = self.triplet_stats(g1, g2, g3)
        if not self.clusters.is_started:
            self.clusters.check_batch(g1.shape[0])
            loss = self._plain_loss(g1, g2, g3)
            with torch.no_grad():
                mean_cos = cosine_matrix(g1.detach(), g2.detach()).mean()
                start = (mean_cos <= self.kmeans_start_cosine).to(torch.int64).reshape(1)
                dist.broadcast_(start, src=0)
            if bool(start.item()):
                self.clusters.initialize(g1.detach(), g2.detach())
                if dist.is_main_process():
                    logger.info(
                        "ClusterNS: clustering starts, %d centroids (%s) from a batch of %d "
                        "(mean cosine %.4f <= %.4f)",
                        self.n_clusters,
                        self.clusters.init,
                        g1.shape[0],
                        float(mean_cos),
                        self.kmeans_start_cosine,
                    )
            stats: dict[str, float | torch.Tensor] = {
                "pos_cos": pos,
                "neg_cos": neg,
                "n_false_neg": 0.0,
                "started": float(self.clusters.is_started),
                **triplet,
            }
            return ObjectiveOutput(loss, stats)

        self.clusters.update(z1.detach(), lr=self.kmeans_lr, rule=self.update_rule)
        terms = _cluster_terms(
            g1,
            g2,
            self.clusters.centroids,
            z3=g3,
            hard_negative_weight=self.hard_negative_weight,
            loss=self.loss,
            temperature=self.temperature,
            margin=self.margin,
            hard_negatives=self.hard_negatives,
            bml_weight=self.bml_weight,
            alpha=self.alpha,
            beta=self.beta,
            bml_reduction=self.bml_reduction,
        )
        return ObjectiveOutput(terms.loss,
                               {**self._cluster_stats(g1, pos, neg, terms), **triplet})

    @torch.no_grad()
    def _cluster_stats(
        self, g1: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, t: _Terms
    ) -> dict[str, float | torch.Tensor]:
        counts = torch.bincount(t.nearest, minlength=self.n_clusters).float()
        nonempty = counts > 0
        hn = self.clusters.centroids[t.second]
        hn_cos = (cosine_matrix(g1.detach(), hn).diagonal()).mean()
        bml = t.bml.detach() if t.bml is not None else torch.zeros((), device=pos.device)
        dev = pos.device
        vals = torch.stack(
            [
                pos,
                neg,
                t.mask.sum().float().to(dev),
                # smallest non-empty cluster, without counts[nonempty] (a host sync)
                counts.masked_fill(~nonempty, float("inf")).min().to(dev),
                counts.max().to(dev),
                (~nonempty).sum().float().to(dev),
                hn_cos.to(dev),
                bml.float().to(dev),
            ]
        ).unbind()
        keys = [
            "pos_cos",
            "neg_cos",
            "n_false_neg",
            "cluster_size_min",
            "cluster_size_max",
            "clusters_empty",
            "hard_neg_cos",
            "bml",
        ]
        stats: dict[str, float | torch.Tensor] = dict(zip(keys, vals, strict=True))
        stats["started"] = 1.0
        return stats

    def extra_repr(self) -> str:
        return (
            f"loss={self.loss}, temperature={self.temperature}, n_clusters={self.n_clusters}, "
            f"kmeans_lr={self.kmeans_lr}, kmeans_start_cosine={self.kmeans_start_cosine}, "
            f"hard_negatives={self.hard_negatives}, bml_weight={self.bml_weight}, "
            f"update_rule={self.update_rule}, bml_reduction={self.bml_reduction}, "
            f"hard_negative_weight={self.hard_negative_weight}"
        )


class ClusterNSFocal(ClusterNS):
    """ClusterNS with a Focal-InfoNCE core: cluster hard negatives and the margin loss inside
    Focal-InfoNCE (the hard-negative block is modulated like any negative). Same options as
    :class:`ClusterNS` with ``loss="focal"``."""

    name = "clusterns-focal"

    def __init__(self, temperature: float = 0.05, **kwargs: object) -> None:
        if kwargs.get("loss", "focal") != "focal":
            raise ConfigError(
                "ClusterNSFocal always uses loss='focal'; use ClusterNS for 'infonce'"
            )
        kwargs["loss"] = "focal"
        super().__init__(temperature, **kwargs)  # type: ignore[arg-type]

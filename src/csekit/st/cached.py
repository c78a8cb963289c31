"""Gradient-cached csekit losses for sentence-transformers (issue #26): the batch's gradient with
the activation memory of ``mini_batch_size`` rows (Gao et al. 2021; docs/gradient_caching.md).

sentence-transformers' trainer calls ``loss(features, labels)`` and then ``backward`` on the
returned loss itself, so the three passes of :mod:`csekit.training.gradcache` are split
between the two calls:

- ``forward``: each column's rows are embedded in mini-batches without gradients, the random
  generators' state recorded before each; the embeddings pass through :class:`_Replay`, an
  autograd node whose output is its input, then the train-only head (with gradient: it is
  small) and the objective (once, on the whole batch: one gather, one centroid update);
- ``backward`` of the loss reaches :class:`_Replay` with the gradient of every embedding; there
  each mini-batch is re-embedded with gradients under its recorded RNG state (the same dropout
  masks, so the same embeddings) and its share of the gradient is back-propagated into the
  model; the generators are then put back as they were.

The head's parameters and the objective's buffers live in the loss as in the uncached losses,
so :class:`csekit.st.SentenceTransformerTrainer` keeps them in its checkpoints. Under DDP
every re-forward but the last runs in the wrapped model's ``no_sync``; under autocast (mixed
precision) the re-forwards run with the autocast settings of the forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from csekit.errors import ConfigError
from csekit.st.losses import (
    ClusterNSFocalLoss,
    ClusterNSLoss,
    CsekitLoss,
    FocalInfoNCELoss,
    SimCSELoss,
)
from csekit.training.gradcache import RngSnapshot


def _rows(features: dict[str, Any]) -> int:
    ids = features.get("input_ids")
    if not isinstance(ids, torch.Tensor):
        ids = next(v for v in features.values() if isinstance(v, torch.Tensor))
    return int(ids.shape[0])


def _slice(features: dict[str, Any], rows: slice, total: int) -> dict[str, Any]:
    """A fresh feature dict of ``rows`` (sentence-transformers' modules add keys to the dict
    they get); per-row tensors sliced, anything else passed as it is."""
    return {k: v[rows] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == total
            else v for k, v in features.items()}


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype | None]:
    if not torch.is_autocast_enabled(device_type):
        return False, None
    return True, torch.get_autocast_dtype(device_type)


class _Replay(torch.autograd.Function):
    """Identity on the cached embeddings; its backward re-embeds and back-propagates."""

    @staticmethod
    def forward(ctx: Any, job: Any, anchor: torch.Tensor, *embs: torch.Tensor) -> Any:
        ctx.job = job
        return tuple(e.clone() for e in embs)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> Any:
        ctx.job.replay(grads)
        ctx.job = None  # (the features and RNG states are freed with the graph)
        return (None, None, *(None for _ in grads))


class _ReplayJob:
    """What pass 3 needs: the columns' features, each mini-batch's rows and RNG state."""

    def __init__(self, loss: CachedCsekitLoss, features: list[dict[str, Any]],
                 plan: list[tuple[int, slice, RngSnapshot]], device: torch.device,
                 autocast: tuple[bool, torch.dtype | None]) -> None:
        self.loss, self.features, self.plan = loss, features, plan
        self.device, self.autocast = device, autocast

    def replay(self, grads: tuple[torch.Tensor, ...]) -> None:
        model = self.loss.model
        no_sync = getattr(model, "no_sync", None)
        after = RngSnapshot.capture(self.device)
        enabled, dtype = self.autocast
        try:
            with torch.enable_grad(), torch.autocast(self.device.type, dtype=dtype,
                                                     enabled=enabled):
                for k, (col, rows, state) in enumerate(self.plan):
                    state.restore()
                    last = k == len(self.plan) - 1
                    sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
                    with sync:
                        feats = _slice(self.features[col], rows, _rows(self.features[col]))
                        z = model(feats)["sentence_embedding"]
                        torch.autograd.backward(z, grads[col][rows].to(z.dtype))
        finally:
            after.restore()


class CachedCsekitLoss(CsekitLoss):
    """A csekit loss whose gradient is computed with gradient caching.

    Args:
        model, mlp, **hparams: as :class:`~csekit.st.losses.CsekitLoss`.
        mini_batch_size: rows of one column embedded at a time (the activation memory is that
            of this many sentences; the loss and gradient are those of the whole batch).
    """

    def __init__(self, model: nn.Module, *, mini_batch_size: int = 32, mlp: bool = True,
                 **hparams: Any) -> None:
        if not isinstance(mini_batch_size, int) or isinstance(mini_batch_size, bool) \
                or mini_batch_size < 1:
            raise ConfigError(f"mini_batch_size must be a positive integer, got "
                              f"{mini_batch_size!r}")
        super().__init__(model, mlp=mlp, **hparams)
        self.mini_batch_size = mini_batch_size

    def embed(self, sentence_features: Iterable[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Pass 1 and the head: (post-head) embeddings per column whose backward runs pass 3.

        Shape: C columns -> C x (b_local, d)."""
        feats = [dict(f) for f in sentence_features]
        if len(feats) not in (2, 3):
            raise ConfigError(f"{type(self).__name__} takes 2 columns (anchor, positive) or 3 "
                              f"(anchor, positive, hard negative), got {len(feats)}")
        device = next(iter(self.model.parameters())).device
        plan: list[tuple[int, slice, RngSnapshot]] = []
        cached: list[torch.Tensor] = []
        with torch.no_grad():
            for col, f in enumerate(feats):
                total = _rows(f)
                parts = []
                for start in range(0, total, self.mini_batch_size):
                    rows = slice(start, min(start + self.mini_batch_size, total))
                    plan.append((col, rows, RngSnapshot.capture(device)))
                    parts.append(self.model(_slice(f, rows, total))["sentence_embedding"])
                cached.append(torch.cat(parts))
        embs: list[torch.Tensor] = list(cached)
        if torch.is_grad_enabled():
            job = _ReplayJob(self, feats, plan, device, _autocast_state(device.type))
            anchor = torch.zeros((), requires_grad=True)  # (makes _Replay's backward run)
            embs = list(_Replay.apply(job, anchor, *cached))
        if self.head is not None:
            self._sync_head_once()
            embs = [self.head(e) for e in embs]
        return embs

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "mini_batch_size": self.mini_batch_size}


class CachedSimCSELoss(CachedCsekitLoss, SimCSELoss):
    """:class:`~csekit.st.losses.SimCSELoss` with gradient caching (``mini_batch_size``)."""


class CachedFocalInfoNCELoss(CachedCsekitLoss, FocalInfoNCELoss):
    """:class:`~csekit.st.losses.FocalInfoNCELoss` with gradient caching (``mini_batch_size``)."""


class CachedClusterNSLoss(CachedCsekitLoss, ClusterNSLoss):
    """:class:`~csekit.st.losses.ClusterNSLoss` with gradient caching (``mini_batch_size``);
    the centroids are updated once per step, from the whole batch."""


class CachedClusterNSFocalLoss(CachedCsekitLoss, ClusterNSFocalLoss):
    """:class:`~csekit.st.losses.ClusterNSFocalLoss` with gradient caching
    (``mini_batch_size``)."""


CACHED_LOSSES: dict[str, type[CachedCsekitLoss]] = {
    cls.objective_name: cls
    for cls in (CachedSimCSELoss, CachedFocalInfoNCELoss, CachedClusterNSLoss,
                CachedClusterNSFocalLoss)
}

__all__ = ["CACHED_LOSSES", "CachedClusterNSFocalLoss", "CachedClusterNSLoss",
           "CachedCsekitLoss", "CachedFocalInfoNCELoss", "CachedSimCSELoss"]

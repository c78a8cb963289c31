"""Adapters for sentence-transformers: csekit's objectives as its losses (the same code path),
their state (train-only MLP head, ClusterNS centroids) in its trainer's checkpoints.

>>> from csekit.st import ClusterNSLoss, SentenceTransformerTrainer
>>> loss = ClusterNSLoss(model, n_clusters=16, bml_weight=1e-3, alpha=0.0, beta=0.3)
>>> SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=loss).train()

Batches larger than memory: the ``Cached*`` losses (``CachedClusterNSLoss(model,
mini_batch_size=32, ...)``) give the same loss and gradient with gradient caching.

See docs/sentence_transformers.md.
"""

from __future__ import annotations

from typing import Any

from csekit.st.cached import (
    CACHED_LOSSES,
    CachedClusterNSFocalLoss,
    CachedClusterNSLoss,
    CachedCsekitLoss,
    CachedFocalInfoNCELoss,
    CachedSimCSELoss,
)
from csekit.st.losses import (
    LOSSES,
    ClusterNSFocalLoss,
    ClusterNSLoss,
    CsekitLoss,
    FocalInfoNCELoss,
    SimCSELoss,
)

_LAZY = {"SentenceTransformerTrainer", "save_loss_state", "load_loss_state", "LOSS_STATE_FILE"}


def __getattr__(name: str) -> Any:
    # The trainer imports sentence-transformers' trainer (transformers, accelerate, datasets):
    # loaded on first use so that the losses stay cheap to import.
    if name in _LAZY:
        from csekit.st import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'csekit.st' has no attribute {name!r}")


__all__ = ["CACHED_LOSSES", "LOSSES", "CachedClusterNSFocalLoss", "CachedClusterNSLoss",
           "CachedCsekitLoss", "CachedFocalInfoNCELoss", "CachedSimCSELoss", "ClusterNSFocalLoss", "ClusterNSLoss", "CsekitLoss", "FocalInfoNCELoss",
           "SentenceTransformerTrainer", "SimCSELoss", "load_loss_state", "save_loss_state"]

"""Centroid state kept identical on every process by construction."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from csekit import distributed as dist
from csekit.clustering.init import greedy_chain_init, kmeanspp_init
from csekit.clustering.update import UpdateRule, apply_momentum, cluster_sums
from csekit.errors import ConfigError

logger = logging.getLogger(__name__)

InitMethod = Literal["greedy_chain", "kmeans++"]
INIT_METHODS: tuple[str, ...] = ("greedy_chain", "kmeans++")  # "greedy_chain": published


class ClusterState(nn.Module):
    """Centroids (float32, no gradients) and whether clustering has started.

    Buffers ``centroids`` ((0,) before initialisation, then (k, d)) and ``started`` (bool) make
    up the state dict, so a resumed run continues exactly. Centroids stay float32 even if the
    module is cast (``.to(torch.bfloat16)`` moves them but keeps their dtype).

    Distributed: :meth:`initialize` computes on rank 0 and broadcasts; :meth:`update`
    all-reduces per-cluster sums and counts of each process's local rows, then every process
    applies the same update. Both are collective calls: every process must make them.
    """

    centroids: torch.Tensor
    started: torch.Tensor

    def __init__(
        self, n_clusters: int, *, init: InitMethod = "greedy_chain", seed: int = 0
    ) -> None:
        super().__init__()
        self.n_clusters = int(n_clusters)
        self.init = init
        self.seed = int(seed)
        self.register_buffer("centroids", torch.zeros(0, dtype=torch.float32))
        self.register_buffer("started", torch.tensor(False))
        self._started = False  # python mirror, avoids a device sync per step

    @property
    def is_started(self) -> bool:
        return self._started

    def check_batch(self, global_batch: int) -> None:
        """ConfigError unless one global batch can seed ``n_clusters`` centroids."""
        if self.n_clusters > global_batch:
            raise ConfigError(
                f"n_clusters={self.n_clusters} exceeds the global batch size {global_batch}: "
                "ClusterNS initialises its centroids from one batch; lower n_clusters or raise "
                "the batch size"
            )

    @torch.no_grad()
    def initialize(self, z1: torch.Tensor, z2: torch.Tensor) -> None:
        """Initialise from the global batch (rank 0 chooses, everyone receives).

        Shape:
            z1, z2: (B_global, d), identical on every process
        """
        b, d = z1.shape
        self.check_batch(b)
        gen = torch.Generator().manual_seed(self.seed)
        if dist.rank() == 0:
            if self.init == "greedy_chain":
                first = int(torch.randint(b, (1,), generator=gen))
                c = greedy_chain_init(z1, z2, self.n_clusters, first_index=first)
            elif self.init == "kmeans++":
                c = kmeanspp_init(z1, self.n_clusters, generator=gen)
            else:
                raise ConfigError(
                    f"init={self.init!r} is not known; use 'greedy_chain' or 'kmeans++'"
                )
            c = c.to(z1.device)
        else:
            c = torch.empty(self.n_clusters, d, dtype=torch.float32, device=z1.device)
        dist.broadcast_(c, src=0)
        self.centroids = c
        self.started = torch.tensor(True, device=c.device)
        self._started = True
        logger.debug(
            "clustering started: %d centroids initialised (%s)", self.n_clusters, self.init
        )

    @torch.no_grad()
    def update(self, z_local: torch.Tensor, *, lr: float, rule: UpdateRule = "sum") -> None:
        """Momentum update with the rows of every process (sums and counts all-reduced).

        Shape:
            z_local: (b_local, d)
        """
        sums, counts = cluster_sums(z_local, self.centroids)
        dist.all_reduce_sum_(sums)
        dist.all_reduce_sum_(counts)
        self.centroids = apply_momentum(self.centroids, sums, counts, lr=lr, rule=rule)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        original = self._buffers["centroids"]
        out = super()._apply(fn, recurse)
        moved = self._buffers["centroids"]
        if moved is not None and original is not None and moved.dtype != torch.float32:
            self._buffers["centroids"] = original.to(device=moved.device, dtype=torch.float32)
        return out

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        key = prefix + "centroids"
        if key in state_dict:
            incoming = state_dict[key]
            if incoming.numel() and incoming.shape[0] != self.n_clusters:
                raise ConfigError(
                    f"the checkpoint holds {incoming.shape[0]} centroids but n_clusters="
                    f"{self.n_clusters}; resume with the n_clusters it was trained with"
                )
            self.centroids = torch.empty(
                incoming.shape, dtype=torch.float32, device=self.centroids.device
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._started = bool(self.started.item())

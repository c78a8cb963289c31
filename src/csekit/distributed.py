"""Thin helpers over ``torch.distributed`` that are no-ops in a single process.

Accelerate (or torchrun) initialises the process group; csekit only uses the collective
operations below, so the same code path serves one process, one node with many GPUs, and many
nodes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one process is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` along dim 0 in rank order; the local shard keeps its autograd graph.

    Shape: (b, *) on each process -> (b * world_size, *). Every process must pass the same
    shape. The other processes' shards are constants here; their gradients are computed by their
    own processes, and gradient averaging across processes (DDP) then sums the contributions, so
    a loss computed on the gathered tensor must be multiplied by ``world_size`` before backward to
    give the gradient of the single-process global-batch loss.
    """
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


def all_reduce_sum_(x: torch.Tensor) -> torch.Tensor:
    """In-place sum over processes; returns ``x``."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def broadcast_(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place broadcast from ``src``; returns ``x``."""
    if is_distributed():
        dist.broadcast(x, src=src)
    return x


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of process ``src`` on every process (a picklable Python value)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` in one process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()

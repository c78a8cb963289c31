"""Gradient caching (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup"): the gradient of a contrastive loss over a batch larger than memory allows, one
optimiser update, the same maths as the whole batch in one graph (docs/gradient_caching.md).

The loss needs every embedding of the batch (in-batch negatives, the global gather, ClusterNS's
centroids); the encoder's activations are what does not fit. The step runs in three passes:

1. **embed**: the local shard in mini-batches of ``M`` examples (all their views: rows
   ``n*i .. n*i+n-1`` are example i), without gradients, keeping the embeddings only; before
   each mini-batch the random generators' states are recorded (:class:`RngSnapshot`);
2. **loss**: the embeddings concatenated into one leaf ``z_all`` that requires grad; the
   objective runs ONCE on it (one gather across processes, one centroid update from the whole
   global batch) and ``backward`` (the trainer's, with the fp16 scaler's scale) stops at
   ``z_all``: ``z_all.grad`` is the loss's gradient per embedding (and any trainable parameter
   of the objective gets its gradient here);
3. **re-embed**: each mini-batch again, with gradients, under its recorded RNG state, so every
   dropout mask (torch's CPU and device generators; the lean CPU forward seeds its numpy masks
   from torch's CPU generator) is the one of pass 1 and the embeddings are pass 1's exactly;
   ``backward(z_mb, z_all.grad[rows])`` adds the mini-batch's share to the parameters'
   gradients. The parameter gradient is the sum over mini-batches of dL/dz_mb * dz_mb/dtheta,
   which is dL/dtheta of the whole batch.

Afterwards the generators are put back where the loss pass left them, so the run's random
stream (and a checkpoint's RNG state, hence an exact resume) does not depend on pass 3.

Under DDP every re-forward but the last runs in ``no_sync`` (the gradients add up locally and
are all-reduced once, with the last mini-batch's backward); inside an accumulation micro-step
that is not the last, the trainer's own ``no_sync`` covers the last one too.

Peak activation memory is that of one mini-batch of ``n*M`` rows instead of ``n*b``; the cost
is one extra forward of the batch (pass 1), about a third more compute for an encoder whose
backward costs twice its forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from csekit.errors import ConfigError


def upcast(z: torch.Tensor) -> torch.Tensor:
    """The encoder output for the objective: float32 from bf16 / fp16 / float32, float64 kept."""
    return z if z.dtype == torch.float64 else z.float()


# ---------------------------------------------------------------------- RNG
REPLAYABLE_DEVICES = ("cpu", "cuda", "mps")


@dataclass
class RngSnapshot:
    """The states of the generators a forward draws dropout from: torch's CPU generator
    (also the seed source of the lean CPU forward's numpy masks) and, on CUDA / MPS, the
    generator of the device the model runs on."""

    cpu: torch.Tensor
    device: torch.device
    accel: torch.Tensor | None = None

    @classmethod
    def capture(cls, device: torch.device | str) -> RngSnapshot:
        device = torch.device(device)
        if device.type not in REPLAYABLE_DEVICES:  # (its masks would not replay: wrong grads)
            raise ConfigError(f"gradient caching replays dropout masks from the generators of "
                              f"{', '.join(REPLAYABLE_DEVICES)} devices; {device.type} is not "
                              f"supported: train without --mini-batch-size")
        accel = None
        if device.type == "cuda":
            accel = torch.cuda.get_rng_state(device)
        elif device.type == "mps":
            accel = torch.mps.get_rng_state()
        return cls(torch.get_rng_state(), device, accel)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.accel is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(self.accel, self.device)
        elif self.accel is not None and self.device.type == "mps":
            torch.mps.set_rng_state(self.accel)


# ---------------------------------------------------------------------- slicing
def row_slices(rows: int, n_views: int, mini_batch_size: int) -> list[slice]:
    """The rows of each mini-batch of ``mini_batch_size`` examples (``n_views`` rows each; the
    last mini-batch holds the rest)."""
    if rows % n_views:
        raise ValueError(f"{rows} rows are not a whole number of {n_views}-view examples")
    step = n_views * mini_batch_size
    return [slice(s, min(s + step, rows)) for s in range(0, rows, step)]


def slice_rows(inputs: dict[str, torch.Tensor], rows: slice, total: int) -> dict[str, torch.Tensor]:
    """``inputs`` restricted to ``rows``: every tensor is indexed by row on its first dim
    (input_ids, attention_mask, token_type_ids (B, L); prompt_template (B,))."""
    out: dict[str, torch.Tensor] = {}
    for key, value in inputs.items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != total:
            raise ValueError(f"gradient caching slices the model's inputs by row; {key!r} is "
                             f"not a ({total}, ...) tensor")
        out[key] = value[rows]
    return out


# ---------------------------------------------------------------------- the step
def cached_forward_backward(
    *, model: Any, objective: Any, inputs: dict[str, torch.Tensor], mini_batch_size: int,
    split: Callable[[torch.Tensor], Sequence[torch.Tensor]], n_views: int,
    backward: Callable[[torch.Tensor], None], no_sync: Callable[[], Any],
    device: torch.device | str,
) -> Any:
    """One micro-step's forward and backward in three passes (see the module docstring);
    returns the objective's output, as the uncached step does.

    Args:
        model: the (possibly DDP-wrapped) encoder, called as ``model(**inputs)``.
        objective: called as ``objective(*split(z_all))``.
        inputs: the local shard's model inputs, ``n_views`` rows per example, example-major.
        split: the embeddings (n*b, d) -> the objective's views (z1, z2[, z3]).
        backward: ``backward(loss)`` as the trainer does it (scale and fp16 scaler included).
        no_sync: a context without DDP's gradient all-reduce (``accelerator.no_sync(model)``).
        device: where the model runs (whose generator replays the dropout masks).
    """
    total = int(next(iter(inputs.values())).shape[0])
    slices = row_slices(total, n_views, mini_batch_size)
    states: list[RngSnapshot] = []
    parts: list[torch.Tensor] = []
    with torch.no_grad():  # pass 1: embeddings only, no activations kept
        for rows in slices:
            states.append(RngSnapshot.capture(device))
            parts.append(upcast(model(**slice_rows(inputs, rows, total))))
    z_all = torch.cat(parts).requires_grad_(True)
    del parts
    out = objective(*split(z_all))  # pass 2: the loss once, on the whole batch
    backward(out.loss)
    grad = z_all.grad
    if grad is None:  # (a loss that does not depend on the embeddings: nothing to add)
        grad = torch.zeros_like(z_all)
    after = RngSnapshot.capture(device)
    try:
        for k, rows in enumerate(slices):  # pass 3: re-embed with gradients, same masks
            states[k].restore()
            last = k == len(slices) - 1
            with contextlib.nullcontext() if last else no_sync():
                z = upcast(model(**slice_rows(inputs, rows, total)))
                torch.autograd.backward(z, grad[rows].to(z.dtype))
    finally:
        after.restore()  # the stream continues from the loss pass, as if pass 3 drew nothing
    return out


def check_mini_batch_size(mini_batch_size: int | None, batch_size: int, world_size: int) -> None:
    """ConfigError (one line) unless ``mini_batch_size`` is unset or 1 .. the per-process batch.

    It need not divide the per-process batch: the last mini-batch holds the rest, and the
    gradient is the same either way.
    """
    if mini_batch_size is None:
        return
    if not isinstance(mini_batch_size, int) or isinstance(mini_batch_size, bool) \
            or mini_batch_size < 1:
        raise ConfigError(f"mini_batch_size must be a positive integer (examples per cached "
                          f"forward), got {mini_batch_size!r}")
    local = batch_size // world_size
    if mini_batch_size > local:
        where = f"the per-process batch {local} ({batch_size} over {world_size} processes)" \
            if world_size > 1 else f"the batch {batch_size}"
        raise ConfigError(f"mini_batch_size {mini_batch_size} is larger than {where}; "
                          f"gradient caching embeds the batch in mini-batches of at most "
                          f"that many examples")


__all__ = ["REPLAYABLE_DEVICES", "RngSnapshot", "cached_forward_backward", "check_mini_batch_size", "row_slices",
           "slice_rows", "upcast"]

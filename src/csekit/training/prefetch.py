"""Background preparation of the next batch, so that tokenising never idles the accelerator.

:class:`Prefetcher` runs ``prepare(next(source))`` for item k+1 in one worker thread while the
caller computes on item k (the fast tokenizers release the GIL). Items come out in order and
exceptions (a bad corpus line, the end of the data) come out where the item would have.
Only one item is ever in preparation, and only after the caller took the previous one, so
:meth:`Prefetcher.drain` (before the trainer evaluates) leaves nothing running that could share
the tokenizer with the evaluation.

:func:`pin` and :func:`to_device` give CUDA pinned host tensors and ``non_blocking`` copies;
on the CPU both are identity functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Generic, TypeVar

import torch

T = TypeVar("T")
U = TypeVar("U")


class Prefetcher(Generic[T, U]):
    """``prepare`` applied to ``source``'s items, one item ahead, in a background thread.

    With ``enabled=False`` it is the plain synchronous ``map``.
    """

    def __init__(self, source: Iterator[T], prepare: Callable[[T], U], *,
                 enabled: bool = True) -> None:
        self._source = source
        self._prepare = prepare
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="csekit-prefetch") \
            if enabled else None
        self._pending: Future[U] | None = None
        self._done = False

    def _produce(self) -> U:
        return self._prepare(next(self._source))

    def __iter__(self) -> Prefetcher[T, U]:
        return self

    def __next__(self) -> U:
        if self._done:
            raise StopIteration
        if self._pool is None:
            try:
                return self._produce()
            except BaseException:
                self._done = True
                raise
        fut = self._pending if self._pending is not None else self._pool.submit(self._produce)
        self._pending = None
        try:
            item = fut.result()
        except BaseException:  # the end of the data, or an error of the source: re-raised
            self._done = True
            raise
        self._pending = self._pool.submit(self._produce)  # overlap with the caller's step
        return item

    def drain(self) -> None:
        """Wait until the item in preparation is ready (its result is kept)."""
        if self._pending is not None:
            wait([self._pending])

    def close(self) -> None:
        self.drain()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._done = True

    def __enter__(self) -> Prefetcher[T, U]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pin(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Page-locked copies for a fast asynchronous host-to-GPU copy (CUDA only)."""
    if device.type != "cuda":
        return tensors
    return {k: v.pin_memory() for k, v in tensors.items()}


def to_device(tensors: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move a batch to ``device``; ``non_blocking`` from pinned memory on CUDA."""
    nb = device.type == "cuda"
    return {k: v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v
            for k, v in tensors.items()}


__all__ = ["Prefetcher", "pin", "to_device"]

"""Seeded, epoch-dependent shuffling that every process reproduces bit for bit.

The generator is NumPy's PCG64 seeded with ``SeedSequence([seed, epoch])``: the same
(seed, epoch) gives the same order on every machine, process and NumPy version that keeps PCG64's
stream (NumPy guarantees this for ``Generator.permutation`` of integer ranges), and different
epochs give independent orders.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np

from csekit.errors import ConfigError

T = TypeVar("T")


def make_rng(seed: int, epoch: int) -> np.random.Generator:
    if int(seed) < 0 or int(epoch) < 0:
        raise ConfigError(f"seed and epoch must be non-negative integers, got seed={seed}, epoch={epoch}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch)]))


def permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)``. Shape: (n,), int64."""
    return make_rng(seed, epoch).permutation(n).astype(np.int64, copy=False)


def buffered_shuffle(items: Iterable[T], buffer_size: int, rng: np.random.Generator) -> Iterator[T]:
    """Approximate shuffle of a stream with a buffer of ``buffer_size`` items.

    Fill the buffer; then for each further item yield a uniformly chosen buffered item and put the
    new one in its place; at the end yield the rest of the buffer in a random order. An item can
    move at most ``buffer_size`` positions earlier; items far apart in the stream stay roughly
    in order, which is the price of not holding the whole stream in memory.
    """
    if buffer_size < 1:
        raise ConfigError(f"shuffle buffer size must be >= 1, got {buffer_size}")
    buf: list[T] = []
    picks = np.empty(0, dtype=np.int64)
    k = 0
    for item in items:
        if len(buf) < buffer_size:
            buf.append(item)
            continue
        if k == len(picks):  # draw random slots in blocks: one numpy call per 4096 items
            picks, k = rng.integers(0, buffer_size, size=4096), 0
        j = int(picks[k])
        k += 1
        yield buf[j]
        buf[j] = item
    for j in rng.permutation(len(buf)):
        yield buf[int(j)]

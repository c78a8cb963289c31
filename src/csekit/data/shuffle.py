"""Seeded, epoch-dependent shuffling that every process reproduces bit for bit.

:class:`FeistelPermutation` is the epoch order of a corpus: keyed by NumPy's
``SeedSequence([seed, epoch])`` (stable across machines and NumPy versions), evaluated on
demand for any index array, so no process materialises the N-sized order.
"""

from __future__ import annotations

import numpy as np

from csekit.errors import ConfigError


def make_rng(seed: int, epoch: int) -> np.random.Generator:
    if int(seed) < 0 or int(epoch) < 0:
        raise ConfigError(f"seed and epoch must be non-negative integers, got seed={seed}, epoch={epoch}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch)]))


# ---------------------------------------------------------------------- bijective shuffle
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_ROUNDS = 6


def mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, element-wise on a uint64 array (a bijection of 64-bit words)."""
    z = np.asarray(z, dtype=np.uint64)
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


class FeistelPermutation:
    """A seeded permutation of ``range(n)`` evaluated on demand, never materialised.

    A balanced Feistel network on ``2h`` bits (``4^h >= n``, so the domain is < 4n) with a
    SplitMix64 round function keyed from ``SeedSequence([seed, epoch])`` is a bijection of
    ``[0, 4^h)``; cycle-walking (re-applying it while the value is >= n) restricts it to a
    bijection of ``[0, n)`` (at most 4 applications on average). ``perm[i]`` for an index array
    costs O(len(i)) numpy work and no N-sized state, so every process computes exactly the rows
    of its own batch slice, and a resumed run recomputes batch k from (seed, epoch, k) alone.

    It is a pseudo-random permutation from a keyed family, not a uniform draw over all n!
    orders (no seeded shuffle is); consecutive positions land far apart in the file.
    """

    def __init__(self, n: int, seed: int, epoch: int) -> None:
        if n < 0:
            raise ConfigError(f"permutation size must be >= 0, got {n}")
        make_rng(seed, epoch)  # validates seed and epoch
        self.n = int(n)
        self.half = max(1, (max(1, (self.n - 1).bit_length()) + 1) // 2)
        self._mask = np.uint64((1 << self.half) - 1)
        ss = np.random.SeedSequence([int(seed), int(epoch), 0xFE15])
        self._keys = ss.generate_state(_ROUNDS, dtype=np.uint64)

    def __len__(self) -> int:
        return self.n

    def _round_trip(self, x: np.ndarray) -> np.ndarray:
        h = np.uint64(self.half)
        left, right = x >> h, x & self._mask
        for key in self._keys:
            left, right = right, left ^ (mix64(right ^ key) & self._mask)
        return (left << h) | right

    def __getitem__(self, index: np.ndarray | int | slice) -> np.ndarray:
        """``perm[i]`` for an int, a slice or an int array. Shape: as ``index``; int64."""
        if isinstance(index, slice):
            index = np.arange(*index.indices(self.n), dtype=np.int64)
        idx = np.asarray(index, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"permutation index out of range 0..{self.n - 1}")
        x = idx.astype(np.uint64).ravel()
        todo = np.arange(x.size)
        while todo.size:
            y = self._round_trip(x[todo])
            x[todo] = y
            todo = todo[y >= np.uint64(self.n)]
        return x.astype(np.int64).reshape(idx.shape)

"""Vectorised 64-bit hashes of byte ranges, and an out-of-core first-occurrence de-duplicator.

Hash of the bytes of one cleaned value, read as little-endian 64-bit words ``w_0 .. w_{m-1}``
(the last one zero-padded): ``h = mix64(sum_k mix64(w_k XOR K_k)  XOR  L * C)`` with ``K_k``
fixed pseudo-random words (seeded, block-wise, so the table grows without changing its
prefix), ``L`` the byte length and ``mix64`` SplitMix64's finaliser (a bijection with full
avalanche). It is not cryptographic; treated as a random 64-bit function, a false duplicate
among n distinct values has probability about n^2 / 2^65 (3e-4 at 10^8 values). All of it is
numpy work on whole blocks: 1/8 of an element per byte, no Python object per value.

:class:`Deduplicator` streams (hash, id) pairs into 64 bucket files by the hash's top bits and
then de-duplicates one bucket at a time, so memory is bounded by a bucket (1/64 of 16 bytes a
value), not by the corpus.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from csekit.data.shuffle import mix64

_BLOCK = 4096
_LEN_K = np.uint64(0x9E3779B97F4A7C15)
_keys = np.empty(0, dtype=np.uint64)


def _table(n: int) -> np.ndarray:
    global _keys
    if len(_keys) < n:
        blocks = [np.random.default_rng([0x5EED, k]).integers(0, 2**64, size=_BLOCK,
                                                               dtype=np.uint64, endpoint=False)
                  for k in range((n + _BLOCK - 1) // _BLOCK)]
        _keys = np.concatenate(blocks)
    return _keys


def hash_ranges(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Hash ``buf[starts[i]:ends[i]]`` for every i. ``buf`` uint8; returns uint64 (n,)."""
    starts = np.asarray(starts, dtype=np.int64)
    lens = np.asarray(ends, dtype=np.int64) - starts
    out = np.zeros(len(starts), dtype=np.uint64)
    nz = np.flatnonzero(lens > 0)
    if nz.size:
        padded = np.zeros(len(buf) + 8, dtype=np.uint8)
        padded[:len(buf)] = buf
        # every 8-byte window of buf as one unaligned little-endian word (a view, no copy)
        win = np.ndarray(shape=(len(buf) + 1,), dtype="<u8", buffer=padded, strides=(1,))
        ln = lens[nz]
        nw = (ln + 7) // 8
        first = np.zeros(len(nw), dtype=np.int64)
        np.cumsum(nw[:-1], out=first[1:])
        k = np.arange(int(nw.sum()), dtype=np.int64) - np.repeat(first, nw)
        words = win[np.repeat(starts[nz], nw) + 8 * k]
        rem = ln % 8
        part = np.flatnonzero(rem)
        last = first[part] + nw[part] - 1
        words[last] &= (np.uint64(1) << (np.uint64(8) * rem[part].astype(np.uint64))) - np.uint64(1)
        out[nz] = np.add.reduceat(mix64(words ^ _table(int(nw.max()))[k]), first)
    return mix64(out ^ (lens.astype(np.uint64) * _LEN_K))


def hash_strings(texts: list[str]) -> np.ndarray:
    """The :func:`hash_ranges` hash of each string's UTF-8 bytes (for the rare exact-path rows)."""
    if not texts:
        return np.empty(0, dtype=np.uint64)
    raw = [t.encode("utf-8") for t in texts]
    ends = np.cumsum([len(r) for r in raw], dtype=np.int64)
    starts = ends - np.array([len(r) for r in raw], dtype=np.int64)
    return hash_ranges(np.frombuffer(b"".join(raw) or b"\0", dtype=np.uint8), starts, ends)


def combine(h: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Hash of a row of several columns: order-dependent combination of column hashes."""
    return mix64(h * np.uint64(0x100000001B3) ^ other)


class Deduplicator:
    """First-occurrence de-duplication of a stream of hashes with bounded memory.

    ``add(hashes)`` assigns ids 0, 1, 2, ... in stream order; ``keep_mask()`` returns the
    :class:`KeepBits` of exactly the first id of each distinct hash.
    """

    BITS = 6

    FLUSH = 1 << 17  # pairs buffered before one write per bucket (2 MiB)

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._files = [open(self.workdir / f"bucket-{b:02d}.bin", "wb")  # noqa: SIM115
                       for b in range(1 << self.BITS)]
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self.n = 0

    def add(self, hashes: np.ndarray) -> None:
        hashes = np.asarray(hashes, dtype=np.uint64)
        if hashes.size:
            self._pending.append(hashes)
            self._pending_n += hashes.size
            if self._pending_n >= self.FLUSH:
                self._flush()

    def _flush(self) -> None:
        if not self._pending_n:
            return
        hashes = np.concatenate(self._pending)
        self._pending, self._pending_n = [], 0
        ids = np.arange(self.n, self.n + hashes.size, dtype=np.uint64)
        self.n += hashes.size
        bucket = (hashes >> np.uint64(64 - self.BITS)).astype(np.int64)
        order = np.argsort(bucket, kind="stable")
        pairs = np.stack([hashes[order], ids[order]], axis=1)
        bounds = np.searchsorted(bucket[order], np.arange((1 << self.BITS) + 1))
        for b in range(1 << self.BITS):
            lo, hi = bounds[b], bounds[b + 1]
            if hi > lo:
                self._files[b].write(pairs[lo:hi].tobytes())

    def keep_mask(self) -> KeepBits:
        """Which ids to keep (the first of each distinct hash), as a bit set."""
        self._flush()
        for f in self._files:
            f.close()
        keep = KeepBits(self.n)
        for b in range(1 << self.BITS):
            path = self.workdir / f"bucket-{b:02d}.bin"
            pairs = np.fromfile(path, dtype=np.uint64).reshape(-1, 2)
            os.unlink(path)
            if len(pairs):
                _, first = np.unique(pairs[:, 0], return_index=True)  # ids increase in a bucket
                keep.set(pairs[first, 1].astype(np.int64))
        return keep


class KeepBits:
    """A set of ids in ``range(n)`` as n/8 bytes (12.5 MB for 10^8 ids)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.bits = np.zeros((n + 7) // 8, dtype=np.uint8)

    def __len__(self) -> int:
        return self.n

    def set(self, ids: np.ndarray) -> None:
        np.bitwise_or.at(self.bits, ids >> 3, (np.uint8(1) << (ids & 7).astype(np.uint8)))

    def count(self, lo: int = 0, hi: int | None = None) -> int:
        hi = self.n if hi is None else hi
        step = 1 << 23
        return sum(int(np.count_nonzero(self.range(a, min(hi, a + step))))
                   for a in range(lo, hi, step))

    def range(self, lo: int, hi: int) -> np.ndarray:
        """bool (hi - lo,): membership of ids lo..hi-1."""
        if hi <= lo:
            return np.zeros(0, dtype=bool)
        raw = np.unpackbits(self.bits[lo >> 3:(hi + 7) >> 3], bitorder="little")
        return raw[lo & 7:(lo & 7) + (hi - lo)].astype(bool)

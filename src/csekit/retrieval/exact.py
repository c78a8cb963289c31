"""Exact top-k inner-product search by chunked matrix products (CPU or GPU).

For a chunk of queries ``Q`` (``query_chunk`` rows) the corpus is read ``corpus_chunk`` rows at a
time; each product ``Q @ C.T`` gives the chunk's best ``k`` per query, merged into the running
best ``k``. Memory is bounded by the chunks (``query_chunk x corpus_chunk`` scores plus the two
chunks of vectors), never by the corpus: a corpus given as ``np.load(path, mmap_mode="r")`` (what
``csekit encode`` writes) is read chunk by chunk from the file with ``pread``, so its pages do
not pile up in the process's memory either.

Order: score descending, ties broken by the lower corpus index first - the order of
``np.lexsort((index, -score))``. ``torch.topk`` makes no promise among equal scores, so a row
whose k-th score is shared by more elements of the chunk than the selection holds is re-ranked
with a stable sort (rare with real embeddings; the tests build such rows on purpose).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from csekit.errors import ConfigError

DEFAULT_QUERY_CHUNK = 1024
DEFAULT_CORPUS_CHUNK = 16384
DEFAULT_SELF_BLOCK = 4096


def num_rows(x: Any) -> int:
    return int(x.shape[0])


def _file_position(x: Any) -> tuple[str, int] | None:
    """(file, byte offset of row 0) of a C-contiguous 2-D view of a file mapping made by
    ``np.load(..., mmap_mode=...)`` / ``np.memmap``; None for anything else."""
    if not isinstance(x, np.ndarray) or x.ndim != 2 or not x.flags.c_contiguous:
        return None
    root = x
    while isinstance(root.base, np.ndarray):
        root = root.base
    if not (isinstance(root, np.memmap) and isinstance(root.base, mmap.mmap) and root.filename):
        return None
    return root.filename, int(root.offset) + (x.ctypes.data - root.ctypes.data)


def read_rows(x: Any, a: int, b: int) -> np.ndarray | torch.Tensor:
    """Rows ``[a, b)`` of a matrix as an in-memory float32 array (or the tensor's slice).

    A C-contiguous ``np.memmap`` is read with one positional file read, so no page of the
    mapping stays resident; other arrays are sliced and copied."""
    if isinstance(x, torch.Tensor):
        return x[a:b]
    where = _file_position(x)
    if where is not None:
        d = x.shape[1]
        item = x.dtype.itemsize
        with open(where[0], "rb") as f:
            f.seek(where[1] + a * d * item)
            out = np.fromfile(f, dtype=x.dtype, count=(b - a) * d).reshape(b - a, d)
        return out.astype(np.float32, copy=False)
    return np.ascontiguousarray(x[a:b], dtype=np.float32)


def _as_tensor(rows: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(rows, torch.Tensor):
        t = rows
    else:
        arr = np.asarray(rows)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    return t.to(device=device, dtype=torch.float32)


def _order(scores: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by (score descending, index ascending)."""
    by_idx = torch.sort(idx, dim=1, stable=True)
    s = torch.gather(scores, 1, by_idx.indices)
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    return torch.gather(s, 1, order), torch.gather(by_idx.values, 1, order)


def chunk_topk(sim: torch.Tensor, k: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``k`` columns of each row of ``sim`` in (score desc, column asc) order, columns
    shifted by ``offset``. Exact with ties: rows whose k-th score is shared beyond the
    selection are re-ranked with a stable sort."""
    k = min(k, sim.shape[1])
    if k == sim.shape[1]:  # the whole chunk: only the order is to be fixed
        vals, cols = sim, torch.arange(k, device=sim.device).expand(sim.shape[0], k)
        vals, cols = _order(vals, cols)
        return vals, cols + offset
    # one more than needed: the k-th and (k+1)-th equal is exactly when topk's choice among
    # the tied entries at the boundary matters
    vals, cols = torch.topk(sim, k + 1, dim=1, sorted=True)
    ambiguous = vals[:, k] == vals[:, k - 1]
    vals, cols = vals[:, :k].contiguous(), cols[:, :k].contiguous()
    if bool(ambiguous.any()):
        rows = ambiguous.nonzero(as_tuple=True)[0]
        full = torch.sort(sim[rows], dim=1, descending=True, stable=True)
        vals[rows] = full.values[:, :k]
        cols[rows] = full.indices[:, :k]
    vals, cols = _order(vals, cols)
    return vals, cols + offset


def _merge(best: tuple[torch.Tensor, torch.Tensor] | None, new: tuple[torch.Tensor, torch.Tensor],
           k: int) -> tuple[torch.Tensor, torch.Tensor]:
    if best is None:
        return new
    # Every index of `best` is lower than every index of `new`, and both are ordered, so a
    # stable descending sort of the concatenation keeps lower indices first among ties.
    s = torch.cat([best[0], new[0]], dim=1)
    i = torch.cat([best[1], new[1]], dim=1)
    order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.gather(s, 1, order), torch.gather(i, 1, order)


def check_chunks(k: int, query_chunk: int, corpus_chunk: int) -> None:
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if query_chunk < 1 or corpus_chunk < 1:
        raise ConfigError(f"chunk sizes must be >= 1, got {query_chunk} and {corpus_chunk}")


def iter_topk(queries: Any, corpus: Any, k: int, *, query_chunk: int = DEFAULT_QUERY_CHUNK,
              corpus_chunk: int = DEFAULT_CORPUS_CHUNK, device: str | torch.device = "cpu",
              ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """For each chunk of queries: ``(first_query_row, scores (q, k') float32, indices (q, k')
    int64)`` with ``k' = min(k, len(corpus))``, best first. Inner products: normalise the
    vectors first for cosine similarity."""
    check_chunks(k, query_chunk, corpus_chunk)
    n = num_rows(corpus)
    if n == 0:
        raise ConfigError("the corpus has no vectors")
    dev = torch.device(device)
    with torch.inference_mode():
        for qa in range(0, num_rows(queries), query_chunk):
            q = _as_tensor(read_rows(queries, qa, min(num_rows(queries), qa + query_chunk)), dev)
            if q.shape[1] != (corpus.shape[1]):
                raise ConfigError(f"queries have {q.shape[1]} dimensions, the corpus "
                                  f"{corpus.shape[1]}")
            best = None
            for ca in range(0, n, corpus_chunk):
                c = _as_tensor(read_rows(corpus, ca, min(n, ca + corpus_chunk)), dev)
                best = _merge(best, chunk_topk(q @ c.T, k, ca), k)
            assert best is not None
            yield qa, best[0].cpu().numpy(), best[1].cpu().numpy().astype(np.int64)


def iter_topk_self(x: Any, k: int, *, block: int = DEFAULT_SELF_BLOCK,
                   device: str | torch.device = "cpu",
                   ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """:func:`iter_topk` of ``x`` against itself with half the products: the score matrix is
    symmetric, so each block pair (i, j), i <= j, is computed once and serves block i's
    queries (columns of block j) and block j's (its transpose). Every query block still sees
    the column blocks in increasing order, so the order (ties to the lower index) is the
    same. Memory: the running best k of the blocks not finished yet (up to ``len(x) x k``
    scores and indices) plus two blocks and their ``block x block`` scores."""
    check_chunks(k, block, block)
    n = num_rows(x)
    if n == 0:
        raise ConfigError("the corpus has no vectors")
    k = min(k, n)
    dev = torch.device(device)
    nb = -(-n // block)
    best: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * nb

    def load(b: int) -> torch.Tensor:
        return _as_tensor(read_rows(x, b * block, min(n, (b + 1) * block)), dev)

    with torch.inference_mode():
        for i in range(nb):
            xi = load(i)
            for j in range(i, nb):
                xj = xi if j == i else load(j)
                sim = xi @ xj.T
                best[i] = _merge(best[i], chunk_topk(sim, k, j * block), k)
                if j != i:
                    best[j] = _merge(best[j], chunk_topk(sim.T, k, i * block), k)
            done = best[i]
            best[i] = None
            assert done is not None
            yield i * block, done[0].cpu().numpy(), done[1].cpu().numpy().astype(np.int64)


def exact_topk(queries: Any, corpus: Any, k: int, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
    """All queries at once: ``(scores (nq, k'), indices (nq, k'))`` (see :func:`iter_topk`)."""
    parts = list(iter_topk(queries, corpus, k, **kw))
    if not parts:
        kk = min(k, num_rows(corpus))
        return np.zeros((0, kk), np.float32), np.zeros((0, kk), np.int64)
    return (np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]))


__all__ = ["DEFAULT_CORPUS_CHUNK", "DEFAULT_QUERY_CHUNK", "DEFAULT_SELF_BLOCK", "chunk_topk",
           "exact_topk", "iter_topk", "iter_topk_self", "read_rows"]

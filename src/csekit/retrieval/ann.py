"""Approximate top-k with faiss (optional extra ``csekit[faiss]``): IVF-Flat, inner product.

``IVFIndex.build`` trains ``nlist`` centroids (k-means on at most ``64 * nlist`` sampled
vectors; ``nlist`` defaults to ``4 * sqrt(N)``), adds the corpus chunk by chunk and searches
``nprobe`` lists per query. Its recall@k against the exact engine is measured on a sample of
queries (:func:`recall_at_k`), and ``nprobe="auto"`` doubles ``nprobe`` from 8 until that
recall reaches ``target_recall`` (0.95 by default) or every list is probed. The vectors live in
the faiss index (in memory): this is the path for corpora beyond what exact search serves fast,
not for bounded memory.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from csekit.errors import ConfigError
from csekit.retrieval.exact import exact_topk, num_rows, read_rows

logger = logging.getLogger(__name__)


def import_faiss() -> Any:
    try:
        import faiss
    except ImportError as err:
        raise ConfigError("faiss is not installed; pip install 'csekit[faiss]' (faiss-cpu), or "
                          "use the exact search (the default)") from err
    return faiss


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found_i & truth_i| / |truth_i| (recall@k, k = truth's width)."""
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / max(1, truth.size)


@dataclass
class IVFIndex:
    index: Any
    nlist: int
    nprobe: int
    n: int
    recall: float | None = None   # recall@k_recall against exact on the sample, when measured
    k_recall: int = 10

    @classmethod
    def build(cls, corpus: Any, *, nlist: int | None = None, nprobe: int | str = "auto",
              target_recall: float = 0.95, sample_queries: int = 256, seed: int = 0,
              chunk: int = 65536) -> IVFIndex:
        faiss = import_faiss()
        n, d = num_rows(corpus), int(corpus.shape[1])
        if n == 0:
            raise ConfigError("the corpus has no vectors")
        nlist = nlist or max(1, min(n // 39, int(4 * math.sqrt(n))))
        if not 1 <= nlist <= n:
            raise ConfigError(f"nlist must be in [1, {n}], got {nlist}")
        rng = np.random.default_rng(seed)
        train_n = min(n, 64 * nlist)
        sample = np.sort(rng.choice(n, size=train_n, replace=False))
        train = np.ascontiguousarray(np.asarray(corpus[sample], dtype=np.float32))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(train)
        for a in range(0, n, chunk):
            index.add(np.ascontiguousarray(read_rows(corpus, a, min(n, a + chunk))))
        out = cls(index=index, nlist=nlist, nprobe=1, n=n)
        qs = np.ascontiguousarray(np.asarray(
            corpus[np.sort(rng.choice(n, size=min(n, sample_queries), replace=False))],
            dtype=np.float32))
        truth = exact_topk(qs, corpus, min(out.k_recall, n))[1]
        if nprobe == "auto":
            p = min(8, nlist)
            while True:
                out.nprobe = p
                out.recall = recall_at_k(out.search(qs, truth.shape[1])[1], truth)
                if out.recall >= target_recall or p >= nlist:
                    break
                p = min(nlist, 2 * p)
        else:
            if not isinstance(nprobe, int) or not 1 <= nprobe <= nlist:
                raise ConfigError(f"nprobe must be 'auto' or in [1, {nlist}], got {nprobe}")
            out.nprobe = nprobe
            out.recall = recall_at_k(out.search(qs, truth.shape[1])[1], truth)
        logger.info("faiss IVF-Flat: %d vectors, nlist %d, nprobe %d, recall@%d %.4f against "
                    "exact on %d sampled queries", n, nlist, out.nprobe, truth.shape[1],
                    out.recall, len(qs))
        return out

    def search(self, queries: Any, k: int, *, chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, indices)`` of the ``k`` best per query; -inf / -1 where fewer were found."""
        self.index.nprobe = self.nprobe
        s_parts, i_parts = [], []
        for a in range(0, num_rows(queries), chunk):
            q = np.ascontiguousarray(read_rows(queries, a, min(num_rows(queries), a + chunk)))
            s, i = self.index.search(q, k)
            s_parts.append(np.where(i < 0, -np.inf, s).astype(np.float32))
            i_parts.append(i.astype(np.int64))
        if not s_parts:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return np.concatenate(s_parts), np.concatenate(i_parts)


__all__ = ["IVFIndex", "import_faiss", "recall_at_k"]

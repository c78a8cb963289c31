"""Hard-negative mining: for each anchor, negatives among its nearest neighbours.

The settings are those of sentence-transformers' ``util.mine_hard_negatives`` (its behaviour,
re-implemented): for a table of (anchor, positive) rows,

- the candidate pool is the extra corpus (if any) followed by the positives, exact duplicates
  removed (first occurrence kept), so one text is one candidate; the anchors are deduplicated
  too, and an anchor's positives are all the positives of its rows;
- each anchor retrieves its ``range_max + max_positives + 1`` nearest candidates (cosine);
- removed: the anchor's own text, its positives, and by the filters, each against the
  anchor's positive score ``pos`` (the lowest cosine of the anchor to one of its positives):
  ``absolute_margin`` m drops a candidate of score s when ``s + m > pos`` (kept when
  ``s <= pos - m``), ``relative_margin`` r when ``s > pos - |pos| * r``, ``max_score`` when
  ``s > max_score``, ``min_score`` when ``s < min_score`` (computed in float32, as the peer);
- of the survivors, best first, the first ``range_max`` are the window, its first
  ``range_min`` are skipped, and ``num_negatives`` are taken: the best (``top``) or a seeded
  random draw (``random``, returned best first). An anchor with fewer survivors gets fewer.

For an unsupervised corpus the positive of a sentence is the sentence itself (``pos`` is its
cosine with itself, 1), which the SimCSE trainer turns into two dropout views.
Order among equal scores: lower candidate index first (the engine's order).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from csekit.errors import ConfigError
from csekit.retrieval.exact import (
    DEFAULT_CORPUS_CHUNK,
    DEFAULT_QUERY_CHUNK,
    DEFAULT_SELF_BLOCK,
    iter_topk,
    iter_topk_self,
)

logger = logging.getLogger(__name__)

SAMPLING = ("top", "random")
# the self-join keeps every unfinished anchor's running top-k: at most this many bytes of it
SELF_JOIN_BYTES = 2 << 30


@dataclass
class MineSettings:
    num_negatives: int = 1
    range_min: int = 0
    range_max: int | None = None      # None: derived as the peer does (resolve_range_max)
    absolute_margin: float | None = None
    relative_margin: float | None = None
    max_score: float | None = None
    min_score: float | None = None
    sampling: str = "top"
    seed: int = 0

    def check(self) -> None:
        if self.num_negatives < 1:
            raise ConfigError(f"--num-negatives must be >= 1, got {self.num_negatives}")
        if self.range_min < 0:
            raise ConfigError(f"--range-min must be >= 0, got {self.range_min}")
        if self.absolute_margin is not None and not -2.0 <= self.absolute_margin <= 2.0:
            raise ConfigError(f"--absolute-margin must be in [-2, 2] (a difference of cosines), "
                              f"got {self.absolute_margin}")
        if self.relative_margin is not None and not 0.0 <= self.relative_margin <= 1.0:
            raise ConfigError(f"--relative-margin must be in [0, 1] (a fraction of the "
                              f"positive's score), got {self.relative_margin}")
        for name in ("max_score", "min_score"):
            v = getattr(self, name)
            if v is not None and not -1.0 <= v <= 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a cosine in [-1, 1], "
                                  f"got {v}")
        if self.sampling not in SAMPLING:
            raise ConfigError(f"--sampling must be one of {', '.join(SAMPLING)}")

    def resolve_range_max(self, max_positives: int, pool_size: int) -> int:
        """``range_max``, or the peer's default: ``range_min + num_negatives * (10 with a
        filter, else 1) + max_positives``; checked against the pool."""
        rmax = self.range_max
        if rmax is None:
            filtered = any(v is not None for v in (self.absolute_margin, self.relative_margin,
                                                   self.max_score))
            rmax = self.range_min + self.num_negatives * (10 if filtered else 1) + max_positives
        if rmax < 1:
            raise ConfigError(f"--range-max (--k) must be >= 1, got {rmax}")
        if rmax >= pool_size:
            raise ConfigError(f"--range-max (--k) {rmax} must be smaller than the number of "
                              f"distinct candidate texts ({pool_size})" +
                              ("" if self.range_max is not None else
                               " (derived from --range-min, --num-negatives and the filters)"))
        if self.range_min >= rmax:
            raise ConfigError(f"--range-min {self.range_min} must be smaller than --range-max "
                              f"{rmax}")
        if self.num_negatives > rmax - self.range_min:
            raise ConfigError(f"--num-negatives {self.num_negatives} does not fit the "
                              f"{rmax - self.range_min} ranks between --range-min and "
                              "--range-max")
        return rmax


@dataclass
class MinePlan:
    """The deduplicated texts and who is whom (see the module docstring)."""
    pool: list[str]                    # candidate texts, duplicates removed
    queries: list[str]                 # distinct anchors, first-occurrence order
    row_query: np.ndarray              # input row -> query index
    query_self: np.ndarray             # query -> pool index of its own text, or -1
    query_row: np.ndarray              # query -> row in `texts` of its embedding
    positives: list[list[int]]         # query -> pool indices of its positives
    extra: list[str] = field(default_factory=list)  # anchors not in the pool (embedded too)

    @property
    def texts(self) -> list[str]:
        """What is embedded: the pool, then the anchors that are not in it."""
        return self.pool + self.extra


def plan(anchors: Sequence[str], positives: Sequence[str],
         corpus: Sequence[str] | None = None) -> MinePlan:
    if len(anchors) != len(positives):
        raise ValueError("anchors and positives differ in length")
    pool = list(dict.fromkeys(list(corpus or []) + list(positives)))
    pool_idx = {t: i for i, t in enumerate(pool)}
    queries = list(dict.fromkeys(anchors))
    q_idx = {t: i for i, t in enumerate(queries)}
    extra = [q for q in queries if q not in pool_idx]
    extra_idx = {t: len(pool) + i for i, t in enumerate(extra)}
    pos: list[list[int]] = [[] for _ in queries]
    for a, p in zip(anchors, positives):
        lst = pos[q_idx[a]]
        j = pool_idx[p]
        if j not in lst:
            lst.append(j)
    return MinePlan(
        pool=pool, queries=queries,
        row_query=np.fromiter((q_idx[a] for a in anchors), np.int64, len(anchors)),
        query_self=np.fromiter((pool_idx.get(q, -1) for q in queries), np.int64, len(queries)),
        query_row=np.fromiter((pool_idx[q] if q in pool_idx else extra_idx[q] for q in queries),
                              np.int64, len(queries)),
        positives=pos, extra=extra)


@dataclass
class MineResult:
    negatives: np.ndarray      # (n_queries, num_negatives) pool indices, -1 where none
    neg_scores: np.ndarray     # (n_queries, num_negatives) float32, nan where none
    pos_scores: np.ndarray     # (n_queries,) the positive score each filter compared with
    range_max: int
    removed: dict[str, int]    # candidates dropped by each filter
    search: str = "exact"      # exact (chunked queries) | exact self-join | faiss


def _rows(emb: Any, rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows)
    if len(rows) and np.all(np.diff(rows) == 1):
        from csekit.retrieval.exact import read_rows
        return np.asarray(read_rows(emb, int(rows[0]), int(rows[-1]) + 1), dtype=np.float32)
    return np.asarray(emb[rows], dtype=np.float32)


def _self_join(p: MinePlan, cand: int, ann: Any, self_join_bytes: int) -> bool:
    nq = len(p.queries)
    return (ann is None and nq == len(p.pool) and not p.extra
            and np.array_equal(p.query_row, np.arange(nq)) and nq * cand * 12 <= self_join_bytes)


def _candidates(p: MinePlan, emb: Any, pool_emb: Any, cand: int, query_chunk: int,
                corpus_chunk: int, device: str, ann: Any, self_join_bytes: int,
                self_block: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
    """(first query, end, query vectors, scores, pool indices) per chunk of queries."""
    nq = len(p.queries)
    if _self_join(p, cand, ann, self_join_bytes):
        # the queries are the pool, in order: the symmetric self-join (half the products)
        for qa, scores, idx in iter_topk_self(pool_emb, cand, block=self_block,
                                              device=device):
            qb = qa + len(scores)
            yield qa, qb, _rows(emb, p.query_row[qa:qb]), scores, idx
        return
    for qa in range(0, nq, query_chunk):
        qb = min(nq, qa + query_chunk)
        q = _rows(emb, p.query_row[qa:qb])
        if ann is not None:
            scores, idx = ann.search(q, cand)
        else:
            _, scores, idx = next(iter_topk(q, pool_emb, cand, query_chunk=len(q),
                                            corpus_chunk=corpus_chunk, device=device))
        yield qa, qb, q, scores, idx


def mine(p: MinePlan, emb: Any, settings: MineSettings, *, query_chunk: int = DEFAULT_QUERY_CHUNK,
         corpus_chunk: int = DEFAULT_CORPUS_CHUNK, device: str = "cpu", ann: Any = None,
         self_join_bytes: int = SELF_JOIN_BYTES, self_block: int = DEFAULT_SELF_BLOCK,
         ) -> MineResult:
    """Negatives for every query of ``p``. ``emb`` holds the normalised embeddings of
    ``p.texts`` (rows, e.g. memory-mapped); ``ann``: an :class:`~csekit.retrieval.ann.IVFIndex`
    over the pool to search instead of the exact engine. When the anchors are the candidates
    (a plain corpus) and their running top-k fits ``self_join_bytes``, the exact search is
    the symmetric self-join (:func:`~csekit.retrieval.exact.iter_topk_self`); otherwise
    memory is bounded by the query and corpus chunks alone."""
    settings.check()
    n_pool = len(p.pool)
    max_pos = max(len(x) for x in p.positives)
    rmax = settings.resolve_range_max(max_pos, n_pool)
    cand = min(rmax + max_pos + 1, n_pool)
    nq, nn = len(p.queries), settings.num_negatives
    neg = np.full((nq, nn), -1, np.int64)
    neg_s = np.full((nq, nn), np.nan, np.float32)
    pos_all = np.empty(nq, np.float32)
    removed = {"absolute_margin": 0, "relative_margin": 0, "max_score": 0, "min_score": 0}
    rng = np.random.default_rng(settings.seed)
    pool_emb = emb[:n_pool] if n_pool < emb.shape[0] else emb
    for qa, qb, q, scores, idx in _candidates(p, emb, pool_emb, cand, query_chunk,
                                              corpus_chunk, device, ann, self_join_bytes,
                                              self_block):
        # positive scores: the lowest cosine of the anchor to one of its positives
        flat = [(i, j) for i in range(qb - qa) for j in p.positives[qa + i]]
        prow = np.array([i for i, _ in flat])
        pemb = _rows(emb, np.array([j for _, j in flat]))
        pscore = np.einsum("ij,ij->i", q[prow], pemb).astype(np.float32)
        pos = np.full(qb - qa, np.inf, np.float32)
        np.minimum.at(pos, prow, pscore)
        pos_all[qa:qb] = pos
        drop = (idx < 0) | (idx == p.query_self[qa:qb, None])
        keys = np.sort(prow * (n_pool + 1) + np.array([j for _, j in flat]))
        ck = np.arange(qb - qa)[:, None] * (n_pool + 1) + idx
        at = np.searchsorted(keys, ck).clip(max=len(keys) - 1)
        drop |= keys[at] == ck
        s = scores.astype(np.float32)
        for name, cut in (
            ("absolute_margin", None if settings.absolute_margin is None else
             s + np.float32(settings.absolute_margin) > pos[:, None]),
            ("relative_margin", None if settings.relative_margin is None else
             s > (pos - np.abs(pos) * np.float32(settings.relative_margin))[:, None]),
            ("max_score", None if settings.max_score is None else
             s > np.float32(settings.max_score)),
            ("min_score", None if settings.min_score is None else
             s < np.float32(settings.min_score)),
        ):
            if cut is not None:
                removed[name] += int((cut & ~drop).sum())
                drop |= cut
        for i in range(qb - qa):
            keep = np.flatnonzero(~drop[i])[:rmax][settings.range_min:]
            if settings.sampling == "random" and len(keep) > nn:
                keep = np.sort(rng.choice(keep, size=nn, replace=False))
            keep = keep[:nn]
            neg[qa + i, :len(keep)] = idx[i, keep]
            neg_s[qa + i, :len(keep)] = s[i, keep]
    search = ("faiss" if ann is not None else "exact self-join"
              if _self_join(p, cand, ann, self_join_bytes) else "exact")
    return MineResult(negatives=neg, neg_scores=neg_s, pos_scores=pos_all, range_max=rmax,
                      removed=removed, search=search)


__all__ = ["SAMPLING", "MinePlan", "MineResult", "MineSettings", "mine", "plan"]

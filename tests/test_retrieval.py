"""The nearest-neighbour engine against brute-force numpy, and faiss's recall against exact.

The oracle: the full score matrix in float64 and, per query, ``np.lexsort((index, -score))``:
score descending, lower corpus index first among ties. Vectors of small multiples of 1/4 make
every product exact in float32 (so scores compare with ``==``) and ties frequent.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csekit.retrieval.exact import chunk_topk, exact_topk, iter_topk, read_rows


def oracle(q: np.ndarray, c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q.astype(np.float64) @ c.astype(np.float64).T
    idx = np.empty((len(q), min(k, len(c))), np.int64)
    for i, row in enumerate(s):
        idx[i] = np.lexsort((np.arange(len(c)), -row))[:idx.shape[1]]
    return np.take_along_axis(s, idx, 1), idx


def tie_vectors(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(-2, 3, size=(n, d)) / 4).astype(np.float32)


@pytest.mark.parametrize("qc,cc", [(1, 1), (3, 7), (16, 50), (1000, 1000), (7, 13)])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_exact_equals_numpy_with_ties(qc: int, cc: int, k: int) -> None:
    q, c = tie_vectors(37, 6, 1), tie_vectors(211, 6, 2)
    s, i = exact_topk(q, c, k, query_chunk=qc, corpus_chunk=cc)
    os_, oi = oracle(q, c, k)
    assert (i == oi).all()
    assert (s == os_).all()   # exact: every product is a sum of multiples of 1/16
    # the inputs really are tie-heavy (the k-th score is shared beyond the selection)
    full = q.astype(np.float64) @ c.T.astype(np.float64)
    assert sum((row == row[oi_[-1]]).sum() > 1 for row, oi_ in zip(full, oi)) > 10


def test_k_larger_than_chunk_and_corpus() -> None:
    q, c = tie_vectors(9, 4, 3), tie_vectors(30, 4, 4)
    s, i = exact_topk(q, c, 25, query_chunk=4, corpus_chunk=8)
    assert (i == oracle(q, c, 25)[1]).all() and (s == oracle(q, c, 25)[0]).all()
    _, i = exact_topk(q, c, 100, corpus_chunk=8)   # k > corpus: the whole corpus, ranked
    assert i.shape == (9, 30) and (i == oracle(q, c, 100)[1]).all()
    _, i = exact_topk(q, c, 100)                   # ... in one chunk
    assert (i == oracle(q, c, 100)[1]).all()


def test_random_floats_match_numpy() -> None:
    rng = np.random.default_rng(0)
    q = rng.standard_normal((50, 32)).astype(np.float32)
    c = rng.standard_normal((700, 32)).astype(np.float32)
    s, i = exact_topk(q, c, 10, query_chunk=16, corpus_chunk=64)
    os_, oi = oracle(q, c, 10)
    assert (i == oi).all()
    np.testing.assert_allclose(s, os_, rtol=0, atol=1e-5)


def test_memmap_input_read_from_the_file(tmp_path) -> None:
    c = tie_vectors(120, 5, 5)
    np.save(tmp_path / "c.npy", c)
    mm = np.load(tmp_path / "c.npy", mmap_mode="r")
    assert (read_rows(mm, 10, 20) == c[10:20]).all()
    view = mm[30:]                      # a slice of the mapping: the right rows too
    assert (read_rows(view, 5, 9) == c[35:39]).all()
    _, i = exact_topk(mm[:7], mm, 6, query_chunk=3, corpus_chunk=11)
    assert (i == oracle(c[:7], c, 6)[1]).all()


def test_chunk_topk_reranks_tied_rows() -> None:
    sim = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0, 2.0]])
    v, i = chunk_topk(sim, 2, 100)
    assert i.tolist() == [[101, 102]] and v.tolist() == [[2.0, 2.0]]


def test_yields_in_query_order() -> None:
    q, c = tie_vectors(10, 3, 6), tie_vectors(20, 3, 7)
    starts = [a for a, _, _ in iter_topk(q, c, 3, query_chunk=4)]
    assert starts == [0, 4, 8]


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _faiss_recall(n: int, d: int) -> tuple[float, float]:
    pytest.importorskip("faiss")
    from csekit.retrieval.ann import IVFIndex, recall_at_k

    x = _unit(n, d, 0)
    ix = IVFIndex.build(x, nprobe="auto", target_recall=0.95)
    q = _unit(300, d, 1)                    # held-out queries, not the build sample
    truth = exact_topk(q, x, 10)[1]
    return recall_at_k(ix.search(q, 10)[1], truth), ix.recall or 0.0


def test_faiss_recall_small() -> None:
    held_out, reported = _faiss_recall(5000, 32)
    assert reported >= 0.95 and held_out >= 0.93


@pytest.mark.slow
def test_faiss_recall_100k() -> None:
    held_out, reported = _faiss_recall(100_000, 32)
    assert reported >= 0.95 and held_out >= 0.95


def test_recall_at_k_definition() -> None:
    from csekit.retrieval.ann import recall_at_k

    assert recall_at_k(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[3, 2, 9], [7, 8, 9]])) == \
        pytest.approx(2 / 6)


@pytest.mark.parametrize("block", [1, 7, 16, 64, 1000])
@pytest.mark.parametrize("k", [1, 9, 30])
def test_self_join_equals_numpy_with_ties(block: int, k: int) -> None:
    from csekit.retrieval.exact import iter_topk_self

    x = tie_vectors(101, 5, 8)
    parts = list(iter_topk_self(x, k, block=block))
    assert [a for a, _, _ in parts] == list(range(0, 101, block))
    s = np.concatenate([p[1] for p in parts])
    i = np.concatenate([p[2] for p in parts])
    os_, oi = oracle(x, x, k)
    assert (i == oi).all() and (s == os_).all()

"""Nearest neighbours over embeddings: the exact chunked top-k engine (:mod:`.exact`), faiss
IVF-Flat with its measured recall (:mod:`.ann`), cached corpus embeddings (:mod:`.embed`),
hard-negative mining (:mod:`.mine`) and semantic search (``csekit search``).
docs/retrieval.md describes them."""

from csekit.retrieval.exact import exact_topk, iter_topk

__all__ = ["exact_topk", "iter_topk"]

"""Training data: readers of every format, cached index, exact shuffle, batching, tokenising.

The tokenising collator (which needs torch) is imported on first use, so that reading a corpus
(``from csekit.data import open_corpus``) stays light, e.g. in 8 processes starting at once.
"""

from __future__ import annotations

from typing import Any

from csekit.data.corpus import Corpus, SentenceCorpus, open_corpus
from csekit.data.triplets import TripletCorpus, open_training_corpus

__all__ = ["Corpus", "SentenceCorpus", "TripletCorpus", "open_corpus", "open_training_corpus",
           "split_views", "tokenize_pairs", "tokenize_views"]


def __getattr__(name: str) -> Any:
    if name in ("split_views", "tokenize_pairs", "tokenize_views"):
        from csekit.data import collate

        return getattr(collate, name)
    raise AttributeError(f"module 'csekit.data' has no attribute {name!r}")

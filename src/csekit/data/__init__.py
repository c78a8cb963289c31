"""Training data: streamed corpus, deterministic batching, tokenising collator, downloads."""

from csekit.data.collate import split_views, tokenize_pairs
from csekit.data.corpus import SentenceCorpus

__all__ = ["SentenceCorpus", "split_views", "tokenize_pairs"]

"""Training data: readers of every format, cached index, exact shuffle, batching, tokenising."""

from csekit.data.collate import split_views, tokenize_pairs
from csekit.data.corpus import Corpus, SentenceCorpus, open_corpus

__all__ = ["Corpus", "SentenceCorpus", "open_corpus", "split_views", "tokenize_pairs"]

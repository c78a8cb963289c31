"""Training data: streamed corpus, deterministic batching, tokenising collator, downloads."""

from csekit.data.collate import split_views, tokenize_pairs, tokenize_views
from csekit.data.corpus import SentenceCorpus
from csekit.data.triplets import TripletCorpus

__all__ = ["SentenceCorpus", "TripletCorpus", "split_views", "tokenize_pairs", "tokenize_views"]

"""``csekit search MODEL --corpus C "query" [...]``: the corpus sentences nearest to each query.

The corpus embeddings are built on first use and cached (csekit's cache, or ``--index DIR``),
keyed by the model's identity and the corpus's content (:mod:`csekit.retrieval.embed`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from csekit.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    from csekit.cli.mine_cmd import add_model_args

    p = subparsers.add_parser(
        "search", help="the corpus sentences nearest to each query, with their scores",
        description="Embed --corpus with MODEL (once: the index is cached) and print the "
                    "--top-k nearest sentences of each query with their cosine scores.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("free_words", nargs="*", metavar="QUERY")
    p.add_argument("--corpus", required=True,
                   help="one sentence per line, or a table's text column (--text-column)")
    p.add_argument("--text-column", default=None)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--interactive", action="store_true",
                   help="read queries from standard input, one per line")
    p.add_argument("--index", default=None, metavar="DIR",
                   help="keep the index in DIR (default: csekit's cache); an index there built "
                        "by another model or for other texts is refused")
    p.add_argument("--rebuild", action="store_true",
                   help="with --index: replace an index built by another model")
    p.add_argument("--on-bad-line", choices=("error", "skip"), default="error")
    add_model_args(p)
    p.set_defaults(func=run)


def _show(query: str, scores: Any, idx: Any, texts: list[str]) -> None:
    print(f"query: {query}")
    for rank, (s, i) in enumerate(zip(scores.tolist(), idx.tolist()), 1):
        print(f"  {rank:>3}. {s:.4f}  {texts[i]}")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from csekit.cli.mine_cmd import ModelSide, read_sentences
    from csekit.retrieval.embed import cached_embeddings, folder_embeddings
    from csekit.retrieval.exact import iter_topk

    if args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {args.top_k}")
    if not args.free_words and not args.interactive:
        raise ConfigError("give one or more queries, or --interactive to read them from stdin")
    if args.rebuild and not args.index:
        raise ConfigError("--rebuild goes with --index DIR (the default cache is keyed by the "
                          "model and rebuilds by itself)")
    side = ModelSide(args)
    texts = read_sentences(args.corpus, args.text_column, args.on_bad_line)
    if args.top_k > len(texts):
        raise ConfigError(f"--top-k {args.top_k} is larger than the corpus ({len(texts)} "
                          "sentences)")
    if args.index:
        emb, built = folder_embeddings(args.index, texts, side.identity, side.encode,
                                       rebuild=args.rebuild, prepare=side.encoder)
        if built:
            print(f"index built in {args.index} ({len(texts)} sentences)", file=sys.stderr)
    else:
        emb = cached_embeddings(texts, side.identity, side.encode,
                                prepare=side.encoder)

    def answer(queries: list[str]) -> None:
        q = np.asarray(side.encode(queries), dtype=np.float32)
        for a, scores, idx in iter_topk(q, emb, args.top_k, query_chunk=args.query_chunk,
                                        corpus_chunk=args.corpus_chunk, device=side.device):
            for i in range(len(scores)):
                _show(queries[a + i], scores[i], idx[i], texts)

    if args.free_words:
        answer(list(args.free_words))
    if args.interactive:
        for line in sys.stdin:
            line = line.strip()
            if line:
                answer([line])
                sys.stdout.flush()
    return 0

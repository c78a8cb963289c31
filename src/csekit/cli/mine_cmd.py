"""``csekit mine MODEL --input C --output triplets.parquet``: hard negatives from the corpus.

The semantics of every filter are in :mod:`csekit.retrieval.mine` and docs/retrieval.md.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from csekit.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The encoding options of mine and search (those of ``csekit encode``)."""
    from csekit.cli.eval_cmd import add_backend_arg, add_template_arg
    from csekit.modeling.representation.pooling import POOLERS
    from csekit.precision import PRECISIONS

    p.add_argument("--pooler", choices=POOLERS, default=None,
                   help="pooling (default: the saved model's own)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-seq-len", type=int, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--query-chunk", type=int, default=1024,
                   help="queries per matrix product (memory: query-chunk x corpus-chunk scores)")
    p.add_argument("--corpus-chunk", type=int, default=16384,
                   help="corpus vectors per matrix product")
    add_backend_arg(p)
    add_template_arg(p)


class ModelSide:
    """The model's identity (checked at once: a missing model is a one-line error) and an
    encode function that loads the model only when something must be embedded."""

    def __init__(self, args: argparse.Namespace) -> None:
        from csekit.cli.eval_cmd import default_device
        from csekit.retrieval.embed import model_identity

        if args.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
        if args.query_chunk < 1 or args.corpus_chunk < 1:
            raise ConfigError("--query-chunk and --corpus-chunk must be >= 1")
        self.args = args
        self.device = default_device(args.device)
        self.identity = model_identity(args.model, options={
            "pooler": args.pooler, "template": args.template, "instruction": args.instruction,
            "max_seq_len": args.max_seq_len, "precision": args.precision,
            "backend": args.backend})
        self._enc: Any = None

    def encoder(self) -> Any:
        if self._enc is None:
            from csekit.modeling.encoder import Encoder

            a = self.args
            self._enc = Encoder.from_pretrained(
                a.model, pooler=a.pooler, trust_remote_code=a.trust_remote_code,
                backend=a.backend, device=self.device,
                templates=[a.template] if a.template else None, instruction=a.instruction)
        return self._enc

    def encode(self, texts: list[str]) -> Any:
        a = self.args
        return self.encoder().encode(texts, batch_size=a.batch_size, max_seq_len=a.max_seq_len,
                                     device=self.device, precision=a.precision, normalize=True,
                                     show_progress=False, stable_shapes=True).numpy()


def read_sentences(path: str, text_column: str | None, on_bad_line: str) -> list[str]:
    from csekit.data.stream import RowStream

    try:
        stream = RowStream(path, text_column=text_column, on_bad_line=on_bad_line)
    except DataError as err:
        if "not found" in str(err) or "no file matches" in str(err):
            raise DataError(f"{path} does not exist") from err
        raise
    out: list[str] = []
    for chunk in stream.chunks(65536):
        out.extend(chunk)
    if not out:
        raise DataError(f"{path}: no text")
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    from csekit.data.tabular import ON_BAD_LINE
    from csekit.retrieval.mine import SAMPLING

    p = subparsers.add_parser(
        "mine", help="mine hard negatives from a corpus into sent0,sent1,hard_neg rows",
        description="For each anchor (a sentence of a corpus, or sent0 of a pairs table), "
                    "negatives among its nearest neighbours under MODEL, with the filters of "
                    "sentence-transformers' mine_hard_negatives. Output: sent0,sent1,hard_neg "
                    "(sent1 = sent0 for a plain corpus), one row per negative.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--input", required=True,
                   help="a corpus (one sentence per line, or a table's text column) or a "
                        "pairs table with sent0,sent1 (or --text-columns)")
    p.add_argument("--output", required=True, metavar="FILE",
                   help=".parquet, .jsonl, .csv or .tsv (by the extension)")
    p.add_argument("--text-column", default=None, help="the text column of a corpus table")
    p.add_argument("--text-columns", default=None, metavar="A,P",
                   help="anchor,positive columns of a pairs table (a third is replaced)")
    p.add_argument("--corpus", default=None,
                   help="extra candidate texts (one per line or one text column), before the "
                        "positives in the candidate pool")
    p.add_argument("--num-negatives", type=int, default=1,
                   help="negatives per anchor, one output row each (default 1)")
    p.add_argument("--range-min", type=int, default=0,
                   help="skip the best RANGE_MIN surviving candidates")
    p.add_argument("--range-max", "--k", dest="range_max", type=int, default=None,
                   help="candidates considered per anchor, the k nearest (default: range-min + "
                        "num-negatives x (10 with a filter, else 1) + positives per anchor)")
    p.add_argument("--absolute-margin", "--margin", dest="absolute_margin", type=float,
                   default=None, help="drop a candidate scoring above positive - MARGIN")
    p.add_argument("--relative-margin", type=float, default=None,
                   help="drop a candidate scoring above positive - |positive| x R (R in [0, 1])")
    p.add_argument("--max-score", type=float, default=None, help="drop candidates above it")
    p.add_argument("--min-score", type=float, default=None, help="drop candidates below it")
    p.add_argument("--sampling", choices=SAMPLING, default="top",
                   help="the best negatives of the window, or a seeded random draw from it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scores", action="store_true",
                   help="add pos_score and neg_score columns")
    p.add_argument("--faiss", action="store_true",
                   help="search with faiss IVF-Flat instead of exact (recall reported)")
    p.add_argument("--nprobe", default="auto",
                   help="faiss lists probed per query, or auto (until recall@10 >= 0.95)")
    p.add_argument("--on-bad-line", choices=ON_BAD_LINE, default="error")
    add_model_args(p)
    p.set_defaults(func=run)


def _read_input(args: argparse.Namespace) -> tuple[list[str], list[str], bool]:
    from csekit.data.triplets import TripletCorpus, resolve_supervision

    try:
        mode = resolve_supervision(args.input, text_columns=args.text_columns,
                                   text_column=args.text_column)
    except DataError as err:
        if "not found" in str(err) or "no file matches" in str(err):
            raise DataError(f"--input {args.input} does not exist") from err
        raise
    if mode == "unsupervised":
        texts = read_sentences(args.input, args.text_column, args.on_bad_line)
        return texts, texts, True
    corpus = TripletCorpus(args.input, columns=args.text_columns, on_bad_line=args.on_bad_line)
    if len(corpus.columns) == 3:
        logger.warning("%s: its %s column is replaced by the mined negatives", args.input,
                       corpus.columns[2])
    rows = list(corpus)
    if not rows:
        raise DataError(f"--input {args.input}: no rows")
    return [r[0] for r in rows], [r[1] for r in rows], False


def run(args: argparse.Namespace) -> int:
    from csekit.retrieval.embed import cached_embeddings
    from csekit.retrieval.mine import MineSettings, mine, plan
    from csekit.retrieval.output import check_output, write_table

    out = Path(args.output)
    check_output(out)
    settings = MineSettings(
        num_negatives=args.num_negatives, range_min=args.range_min, range_max=args.range_max,
        absolute_margin=args.absolute_margin, relative_margin=args.relative_margin,
        max_score=args.max_score, min_score=args.min_score, sampling=args.sampling,
        seed=args.seed)
    settings.check()
    if args.nprobe != "auto" and not args.nprobe.isdigit():
        raise ConfigError(f"--nprobe must be 'auto' or a positive integer, got {args.nprobe!r}")
    if args.faiss:
        from csekit.retrieval.ann import import_faiss

        import_faiss()  # not installed: one line before any work
    side = ModelSide(args)
    anchors, positives, unsup = _read_input(args)
    extra = read_sentences(args.corpus, None, args.on_bad_line) if args.corpus else None
    mp = plan(anchors, positives, extra)
    settings.resolve_range_max(max(len(x) for x in mp.positives), len(mp.pool))
    start = time.perf_counter()
    emb = cached_embeddings(mp.texts, side.identity, side.encode,
                                prepare=side.encoder)
    ann = None
    if args.faiss:
        from csekit.retrieval.ann import IVFIndex

        nprobe = args.nprobe if args.nprobe == "auto" else int(args.nprobe)
        ann = IVFIndex.build(emb[:len(mp.pool)], nprobe=nprobe, seed=args.seed)
        print(f"faiss IVF-Flat: nlist {ann.nlist}, nprobe {ann.nprobe}, recall@10 against "
              f"exact {ann.recall:.4f} (sampled queries)")
    res = mine(mp, emb, settings, query_chunk=args.query_chunk,
               corpus_chunk=args.corpus_chunk, device=side.device, ann=ann)
    cols = ["sent0", "sent1", "hard_neg"] + (["pos_score", "neg_score"] if args.scores else [])

    def batches():
        step = 65536
        for a in range(0, len(anchors), step):
            b: dict[str, list] = {c: [] for c in cols}
            for r in range(a, min(len(anchors), a + step)):
                q = int(mp.row_query[r])
                for j, s in zip(res.negatives[q].tolist(), res.neg_scores[q].tolist()):
                    if j < 0:
                        continue
                    b["sent0"].append(anchors[r])
                    b["sent1"].append(positives[r])
                    b["hard_neg"].append(mp.pool[j])
                    if args.scores:
                        b["pos_score"].append(float(res.pos_scores[q]))
                        b["neg_score"].append(s)
            yield b

    n = write_table(out, cols, batches())
    short = int((res.negatives < 0).any(axis=1).sum())
    secs = time.perf_counter() - start
    print(f"{out}: {n} rows (sent0,sent1,hard_neg{',scores' if args.scores else ''}) from "
          f"{len(anchors)} {'sentences' if unsup else 'pairs'}, {len(mp.queries)} distinct "
          f"anchors, {len(mp.pool)} candidates, range-max {res.range_max}, {res.search} "
          f"search; {secs:.1f}s")
    removed = ", ".join(f"{v} by {k.replace('_', '-')}" for k, v in res.removed.items() if v)
    if removed:
        print(f"candidates removed: {removed}")
    if short:
        print(f"{short} anchors got fewer than {settings.num_negatives} negatives "
              f"({int((res.negatives < 0).all(axis=1).sum())} none); raise --range-max or "
              "loosen the filters for more")
    return 0

"""Supervised training data: rows of 2 or 3 text columns (NLI pairs / triplets).

SimCSE's supervised data, ``nli_for_simcse.csv``, is a CSV with the header
``sent0,sent1,hard_neg``: a premise, an entailed hypothesis (the positive) and a contradicted
one (the hard negative). The same columns are read from every tabular format csekit reads
(CSV / TSV with a header, JSON Lines, Parquet, a ``datasets.save_to_disk`` folder), through the
same readers, cached memory-mapped index, exact Feistel shuffle and per-rank reading as any
corpus (:mod:`csekit.data.corpus`): a :class:`TripletCorpus` is a
:class:`~csekit.data.corpus.Corpus` of 2 or 3 text columns, whose rows are tuples.

Columns: ``text_columns`` names the anchor, positive and (optional) hard-negative columns in
that order; without it, ``sent0,sent1,hard_neg`` is used when all three exist, else
``sent0,sent1``. Two columns train on pairs (in-batch negatives only), three on triplets.

The training mode of a file (:func:`resolve_supervision`): plain text is unsupervised; a table
is supervised when ``text_columns`` is given or it has ``sent0`` and ``sent1`` columns, and
otherwise unsupervised on its one text column (``--text-column``, or the unambiguous one).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Literal

from csekit.data.corpus import Corpus, SentenceCorpus
from csekit.data.sources import TEXT, resolve_sources
from csekit.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

TRIPLET_COLUMNS: tuple[str, str, str] = ("sent0", "sent1", "hard_neg")
# What a training file can hold; "auto" picks from the file (``resolve_supervision``).
SUPERVISION_MODES: tuple[str, ...] = ("auto", "unsupervised", "pairs", "triplets")


def parse_columns(text_columns: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"a,b[,c]"`` (or a sequence) -> 2 or 3 distinct column names; None stays None."""
    if text_columns is None:
        return None
    names = tuple(c.strip() for c in (text_columns.split(",") if isinstance(text_columns, str)
                                      else text_columns))
    if not 2 <= len(names) <= 3 or any(not n for n in names) or len(set(names)) != len(names):
        raise ConfigError(f"--text-columns {','.join(names)!r}: give 2 or 3 distinct column "
                          "names, anchor,positive[,hard_negative] (e.g. sent0,sent1,hard_neg)")
    return names


def is_table(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> bool:
    """Whether the training data is tabular (not one sentence per line)."""
    return resolve_sources(paths)[0].kind != TEXT  # type: ignore[arg-type]


def read_header(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """The column names of the first table source (as the readers see them)."""
    from csekit.data.tabular import schema_of

    return list(schema_of(resolve_sources(paths)[0]))  # type: ignore[arg-type]


def choose_columns(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                   text_columns: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """The anchor, positive[, hard negative] columns of a table: ``text_columns`` (all must
    exist), else ``sent0,sent1,hard_neg`` when present, else ``sent0,sent1``; DataError when
    none applies."""
    given = parse_columns(text_columns)
    header = read_header(paths)
    where = resolve_sources(paths)[0].path  # type: ignore[arg-type]
    if given is not None:
        missing = [c for c in given if c not in header]
        if missing:
            raise DataError(f"{where}: no column(s) {', '.join(missing)}; the file has "
                            f"{', '.join(header) or 'no columns'}")
        return given
    if all(c in header for c in TRIPLET_COLUMNS):
        return TRIPLET_COLUMNS
    if all(c in header for c in TRIPLET_COLUMNS[:2]):
        return TRIPLET_COLUMNS[:2]
    raise DataError(f"{where}: columns {', '.join(header) or '(none)'}; expected "
                    f"sent0,sent1[,hard_neg], or name them with --text-columns a,b[,c]")


class TripletCorpus(Corpus):
    """Rows of 2 (pairs) or 3 (triplets) texts from any tabular source.

    Everything else (cleaning, bad rows naming ``FILE:LINE`` / ``FILE: row N``, ``dedup`` over
    all columns together, the cached index, batches with ``rank`` / ``world``) is
    :class:`~csekit.data.corpus.Corpus`'s.

    Shape of a global batch: ``batch_size`` tuples of ``len(columns)`` strings.
    """

    def __init__(self, path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                 columns: str | Sequence[str] | None = None,
                 on_bad_line: Literal["error", "skip"] = "error", dedup: bool = False) -> None:
        if not is_table(path):
            raise DataError(f"{resolve_sources(path)[0].path}: not a table; supervised data "  # type: ignore[arg-type]
                            "is read from .csv, .tsv, .jsonl, .parquet files or datasets "
                            "folders with named columns")
        super().__init__(path, text_columns=choose_columns(path, columns), dedup=dedup,
                         on_bad_line=on_bad_line)
        logger.info("%s: %d %s (columns %s)", self.path, len(self), self.mode,
                    ",".join(self.columns))

    @property
    def mode(self) -> str:
        """``pairs`` (2 columns) or ``triplets`` (3)."""
        return "triplets" if len(self.columns) == 3 else "pairs"

    @property
    def n_views(self) -> int:
        return len(self.columns)


def resolve_supervision(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                        supervision: str = "auto", text_columns: str | None = None,
                        text_column: str | None = None) -> str:
    """The training mode of the data: ``unsupervised``, ``pairs`` or ``triplets``. Cheap:
    reads only the schema. ``supervision`` other than ``auto`` must agree with the data."""
    if supervision not in SUPERVISION_MODES:
        raise ConfigError(f"unknown supervision {supervision!r}; choose one of "
                          f"{', '.join(SUPERVISION_MODES)}")
    if text_columns is not None and text_column is not None:
        raise ConfigError("give --text-column (one column, unsupervised) or --text-columns "
                          "(2 or 3 columns, supervised), not both")
    table = is_table(paths)
    where = resolve_sources(paths)[0].path  # type: ignore[arg-type]
    if not table:
        if supervision in ("pairs", "triplets") or text_columns is not None:
            raise ConfigError(f"{where}: supervised training (--supervision {supervision}, "
                              "--text-columns) reads a table (.csv, .tsv, .jsonl, .parquet, a "
                              "datasets folder); a plain text file is one sentence per line "
                              "(unsupervised)")
        return "unsupervised"
    if supervision == "unsupervised" or text_column is not None:
        if supervision in ("pairs", "triplets"):
            raise ConfigError(f"--text-column names the one text column of unsupervised "
                              f"training; for --supervision {supervision} use --text-columns")
        return "unsupervised"
    header = read_header(paths)
    if text_columns is None and not all(c in header for c in TRIPLET_COLUMNS[:2]):
        if supervision in ("pairs", "triplets"):
            choose_columns(paths, None)  # the one-line error naming the columns
        return "unsupervised"
    mode = "triplets" if len(choose_columns(paths, text_columns)) == 3 else "pairs"
    if supervision not in ("auto", mode):
        raise ConfigError(f"{where}: --supervision {supervision} but the columns give {mode}; "
                          "name the columns with --text-columns a,b[,c]")
    return mode


def open_training_corpus(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                         supervision: str = "auto", text_columns: str | None = None,
                         text_column: str | None = None, dedup: bool = False,
                         on_bad_line: Literal["error", "skip"] = "error",
                         ) -> tuple[Corpus, str]:
    """The training corpus and its mode (:func:`resolve_supervision`): a
    :class:`SentenceCorpus` (``unsupervised``, rows are sentences) or a :class:`TripletCorpus`
    (``pairs`` / ``triplets``, rows are tuples)."""
    mode = resolve_supervision(paths, supervision=supervision, text_columns=text_columns,
                               text_column=text_column)
    if mode == "unsupervised":
        return SentenceCorpus(paths, text_column=text_column, dedup=dedup,
                              on_bad_line=on_bad_line), mode
    return TripletCorpus(paths, columns=text_columns, dedup=dedup, on_bad_line=on_bad_line), mode


__all__ = ["SUPERVISION_MODES", "TRIPLET_COLUMNS", "TripletCorpus", "choose_columns",
           "is_table", "open_training_corpus", "parse_columns", "read_header",
           "resolve_supervision"]

"""Supervised training data: rows of 2 or 3 text columns (NLI pairs / triplets).

SimCSE's supervised data, ``nli_for_simcse.csv``, is a CSV with the header
``sent0,sent1,hard_neg``: a premise, an entailed hypothesis (the positive) and a contradicted
one (the hard negative). The same columns are read from:

* ``.csv`` (comma) and ``.tsv`` (tab) with a header line, parsed by the standard library's
  :mod:`csv` (quoted fields, embedded commas and newlines, a UTF-8 BOM);
* ``.jsonl`` / ``.ndjson``: one JSON object per line (:mod:`json`), blank lines ignored;
* ``.parquet``: read with pyarrow (``pip install csekit[parquet]``), only the text columns.

Columns: ``text_columns`` names the anchor, positive and (optional) hard-negative columns in
that order; without it, ``sent0,sent1,hard_neg`` is used when all three exist, else
``sent0,sent1``. Two columns train on pairs (in-batch negatives only), three on triplets.

:class:`TripletCorpus` has the corpus API of :class:`csekit.data.SentenceCorpus` (``len``,
``num_batches``, ``check_batch_size``, ``batches(batch_size, seed=, epoch=, skip=)``) and the
very same seeded permutation (:func:`csekit.data.shuffle.permutation`), so batching is
deterministic in (seed, epoch) and resumable with ``skip``; a batch is a list of tuples.

The rows are held in memory (one tuple of strings each; nli_for_simcse.csv's 275k rows take a
few hundred MB of Python objects). This module is deliberately small: the general multi-column
readers with a memory-mapped index (the data-formats work) can replace ``_read_rows`` without
changing the API.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from csekit.data.corpus import SentenceCorpus
from csekit.data.shuffle import permutation
from csekit.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

TRIPLET_COLUMNS: tuple[str, str, str] = ("sent0", "sent1", "hard_neg")
# What a training file can hold; "auto" picks from the file (``resolve_supervision``).
SUPERVISION_MODES: tuple[str, ...] = ("auto", "unsupervised", "pairs", "triplets")
TABLE_FORMATS: dict[str, str] = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl",
                                 ".ndjson": "jsonl", ".parquet": "parquet"}
_HINT = "fix the file or pass --on-bad-line skip to skip and count bad rows"


def table_format(path: str | os.PathLike[str]) -> str | None:
    """``csv`` | ``tsv`` | ``jsonl`` | ``parquet`` from the file name, or None (plain text)."""
    return TABLE_FORMATS.get(Path(path).suffix.lower())


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


class TripletCorpus:
    """Rows of 2 (pairs) or 3 (triplets) texts from a CSV / TSV / JSONL / Parquet file.

    Each value is stripped; a row with a missing, non-string or empty value is bad:
    ``on_bad_line="error"`` raises a one-line DataError naming the file and row (``FILE:LINE``
    for CSV / TSV / JSONL, the line where the record ends; the row number for Parquet),
    ``"skip"`` drops and counts it (``stats["bad_rows"]``, numbers in ``bad_rows``).
    ``dedup=True`` keeps the first of identical rows. An empty result raises DataError.

    Shape of a batch: ``batch_size`` tuples of ``len(columns)`` strings.
    """

    def __init__(self, path: str | os.PathLike[str], *,
                 columns: str | Sequence[str] | None = None,
                 on_bad_line: Literal["error", "skip"] = "error", dedup: bool = False) -> None:
        if on_bad_line not in ("error", "skip"):
            raise ConfigError(f"on_bad_line must be 'error' or 'skip', got {on_bad_line!r}")
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: training file not found")
        fmt = table_format(self.path)
        if fmt is None:
            raise DataError(f"{self.path}: not a table; supervised data is read from .csv, "
                            f".tsv, .jsonl or .parquet files with a header / named columns")
        self.format = fmt
        self.on_bad_line = on_bad_line
        self.dedup = dedup
        self.stats: dict[str, int] = {"rows": 0, "bad_rows": 0, "duplicates": 0}
        self.bad_rows: list[int] = []
        self.columns = choose_columns(self.path, columns)
        rows = self._clean(self._read_rows())
        if not rows:
            raise DataError(f"{self.path}: no usable rows ({self.stats['rows']} read, "
                            f"{self.stats['bad_rows']} bad)")
        self.rows: list[tuple[str, ...]] = rows
        self.stats["kept"] = len(rows)
        logger.info("%s: %d %s (columns %s; %s)", self.path, len(rows), self.mode,
                    ",".join(self.columns), ", ".join(f"{k}={v}" for k, v in self.stats.items()))

    @property
    def mode(self) -> str:
        """``pairs`` (2 columns) or ``triplets`` (3)."""
        return "triplets" if len(self.columns) == 3 else "pairs"

    @property
    def n_views(self) -> int:
        return len(self.columns)

    # ------------------------------------------------------------------ reading
    def _read_rows(self) -> Iterator[tuple[int, list[Any]]]:
        """(row number, raw values in column order); the number is the file line where known."""
        cols = self.columns
        try:
            if self.format == "parquet":
                pq = _parquet()
                try:
                    table = pq.read_table(self.path, columns=list(cols))
                except Exception as err:  # pyarrow's ArrowInvalid & co
                    raise DataError(f"{self.path}: not a readable Parquet file ({err})") from err
                data = [table.column(c).to_pylist() for c in cols]
                for i, values in enumerate(zip(*data, strict=True)):
                    yield i + 1, list(values)
                return
            if self.format == "jsonl":
                for lineno, obj in _json_objects(self.path):
                    yield lineno, [obj.get(c) for c in cols]
                return
            csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
            with open(self.path, encoding="utf-8-sig", newline="") as f:
                reader = csv.DictReader(f, delimiter=_delimiter(self.format), strict=True)
                for rec in reader:
                    yield reader.line_num, [rec.get(c) for c in cols]
        except (UnicodeDecodeError, csv.Error) as err:
            raise DataError(f"{self.path}: cannot parse the file ({err}); check its encoding "
                            "(UTF-8) and quoting") from err
        except OSError as err:
            raise DataError(f"{self.path}: cannot read the file ({err})") from err

    def _clean(self, raw: Iterator[tuple[int, list[Any]]]) -> list[tuple[str, ...]]:
        rows: list[tuple[str, ...]] = []
        seen: set[tuple[str, ...]] = set()
        for number, values in raw:
            self.stats["rows"] += 1
            bad = next((c for c, v in zip(self.columns, values, strict=True)
                        if not isinstance(v, str) or not v.strip()), None)
            if bad is not None:
                if self.on_bad_line == "error":
                    where = (f"{self.path}: row {number}" if self.format == "parquet"
                             else f"{self.path}:{number}")  # the line where the record ends
                    raise DataError(f"{where}: column {bad} is missing or empty; {_HINT}")
                self.stats["bad_rows"] += 1
                if len(self.bad_rows) < 20:
                    self.bad_rows.append(number)
                continue
            row = tuple(v.strip() for v in values)
            if self.dedup:
                if row in seen:
                    self.stats["duplicates"] += 1
                    continue
                seen.add(row)
            rows.append(row)
        if self.stats["bad_rows"]:
            logger.warning("%s: skipped %d bad rows (first %s)", self.path,
                           self.stats["bad_rows"], ", ".join(map(str, self.bad_rows[:5])))
        return rows

    # ------------------------------------------------------------------ the corpus API
    def __len__(self) -> int:
        return len(self.rows)

    def num_batches(self, batch_size: int) -> int:
        """Full global batches per epoch (the last incomplete batch is dropped)."""
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        return len(self) // batch_size

    def check_batch_size(self, batch_size: int) -> None:
        if self.num_batches(batch_size) == 0:
            raise DataError(f"{self.path}: {len(self)} rows, fewer than one global batch of "
                            f"{batch_size}; use a smaller --batch-size or more rows")

    def batches(self, batch_size: int, *, seed: int, epoch: int = 0, skip: int = 0,
                shuffle: bool = True) -> Iterator[list[tuple[str, ...]]]:
        """Global batches of one epoch, deterministic in (seed, epoch); ``skip`` batches already
        consumed are left out (resume). Same permutation as ``SentenceCorpus`` of equal length."""
        self.check_batch_size(batch_size)
        n_batches = self.num_batches(batch_size)
        if not 0 <= skip <= n_batches:
            raise ConfigError(f"skip={skip} is outside 0..{n_batches} batches of this epoch")
        n = len(self)
        order = permutation(n, seed, epoch) if shuffle else np.arange(n, dtype=np.int64)
        for b in range(skip, n_batches):
            yield [self.rows[int(i)] for i in order[b * batch_size:(b + 1) * batch_size]]


def _delimiter(fmt: str) -> str:
    return "\t" if fmt == "tsv" else ","


def _json_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg})") from err
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object per line")
            yield lineno, obj


def read_header(path: str | os.PathLike[str]) -> list[str]:
    """The column names of a table file (CSV / TSV header, first JSONL object, Parquet schema)."""
    path = Path(path)
    fmt = table_format(path)
    try:
        if fmt == "parquet":
            return list(_parquet().read_schema(path).names)
        if fmt == "jsonl":
            return next((list(obj) for _, obj in _json_objects(path)), [])
        with open(path, encoding="utf-8-sig", newline="") as f:
            return next(csv.reader(f, delimiter=_delimiter(fmt or "csv")), [])
    except (UnicodeDecodeError, csv.Error, OSError) as err:
        raise DataError(f"{path}: cannot read the header ({err}); check the file is UTF-8 "
                        "text with a header line") from err
    except Exception as err:  # pyarrow's ArrowInvalid & co: not a Parquet file
        if fmt == "parquet" and type(err).__module__.startswith("pyarrow"):
            raise DataError(f"{path}: not a readable Parquet file ({err})") from err
        raise


def choose_columns(path: str | os.PathLike[str],
                   text_columns: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """The anchor, positive[, hard negative] columns of a table file: ``text_columns`` (all must
    exist), else ``sent0,sent1,hard_neg`` when present, else ``sent0,sent1``; DataError when
    none applies."""
    given = parse_columns(text_columns)
    header = read_header(path)
    if given is not None:
        missing = [c for c in given if c not in header]
        if missing:
            raise DataError(f"{path}: no column(s) {', '.join(missing)}; the file has "
                            f"{', '.join(header) or 'no columns'}")
        return given
    if all(c in header for c in TRIPLET_COLUMNS):
        return TRIPLET_COLUMNS
    if all(c in header for c in TRIPLET_COLUMNS[:2]):
        return TRIPLET_COLUMNS[:2]
    raise DataError(f"{path}: columns {', '.join(header) or '(none)'}; expected "
                    f"sent0,sent1[,hard_neg], or name them with --text-columns a,b[,c]")


def _parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ConfigError("reading .parquet needs pyarrow: pip install 'csekit[parquet]'") \
            from err
    return pq


def resolve_supervision(path: str | os.PathLike[str], *, supervision: str = "auto",
                        text_columns: str | None = None) -> str:
    """The training mode for a file: ``unsupervised`` for a one-sentence-per-line file,
    ``pairs`` / ``triplets`` for a table (from its columns). Cheap: reads only the header.

    ``supervision`` other than ``auto`` must agree with the file, else ConfigError.
    """
    if supervision not in SUPERVISION_MODES:
        raise ConfigError(f"unknown supervision {supervision!r}; choose one of "
                          f"{', '.join(SUPERVISION_MODES)}")
    if table_format(path) is None:
        if supervision in ("pairs", "triplets") or text_columns is not None:
            raise ConfigError(f"{path}: supervised training (--supervision {supervision}, "
                              f"--text-columns) reads a .csv, .tsv, .jsonl or .parquet file; "
                              "a plain text file is one sentence per line (unsupervised)")
        return "unsupervised"
    if supervision == "unsupervised":
        raise ConfigError(f"{path}: unsupervised training reads one sentence per line (.txt / "
                          ".gz); for a table give --supervision pairs|triplets or auto")
    if not Path(path).is_file():
        raise DataError(f"{path}: training file not found (--train-file)")
    mode = "triplets" if len(choose_columns(path, text_columns)) == 3 else "pairs"
    if supervision not in ("auto", mode):
        raise ConfigError(f"{path}: --supervision {supervision} but the columns give {mode}; "
                          "name the columns with --text-columns a,b[,c]")
    return mode




def open_training_corpus(path: str | os.PathLike[str], *, supervision: str = "auto",
                         text_columns: str | None = None, dedup: bool = False,
                         on_bad_line: Literal["error", "skip"] = "error",
                         ) -> tuple[SentenceCorpus | TripletCorpus, str]:
    """The training corpus of a file and its mode (:func:`resolve_supervision`): a
    :class:`SentenceCorpus` (``unsupervised``, batches of sentences) or a
    :class:`TripletCorpus` (``pairs`` / ``triplets``, batches of tuples)."""
    mode = resolve_supervision(path, supervision=supervision, text_columns=text_columns)
    if mode == "unsupervised":
        return SentenceCorpus(path, dedup=dedup, on_bad_line=on_bad_line), mode
    return TripletCorpus(path, columns=text_columns, dedup=dedup, on_bad_line=on_bad_line), mode


__all__ = ["SUPERVISION_MODES", "TRIPLET_COLUMNS", "TripletCorpus", "choose_columns",
           "open_training_corpus", "parse_columns", "read_header", "resolve_supervision",
           "table_format"]

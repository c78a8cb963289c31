"""Every row of a corpus, in order, in bounded memory: what ``csekit encode`` reads.

Unlike training (:mod:`corpus`), nothing is dropped silently: a row whose text is missing,
not a string, invalid UTF-8, holding a NUL, or empty after stripping is *bad* - an error
naming it (``FILE:LINE`` / ``FILE: row N``), or skipped and counted under
``on_bad_line="skip"``. A blank line of a text file is such an empty row. Kept text is
stripped as in training; ``max_chars`` is only a guard against pathological rows (the
tokenizer truncates to its own length).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np

from csekit.data.memory import HeapTrimmer
from csekit.data.reading import open_binary
from csekit.data.sources import TEXT, Source, resolve_sources
from csekit.data.tabular import (
    ON_BAD_LINE,
    BadRows,
    clean_column,
    iter_batches,
    resolve_columns,
    schema_of,
    where,
)
from csekit.data.textscan import BAD, BLANK, SHORT, scan_lines
from csekit.errors import ConfigError, DataError

STREAM_MAX_CHARS = 100_000


class RowStream:
    """``chunks(n)`` yields lists of at most ``n`` cleaned texts of one column, in row order.

    ``skipped`` / ``skipped_where`` count and name the bad rows skipped so far; ``upper_bound()``
    is the number of rows before any is skipped (for pre-allocating the output).
    """

    def __init__(self, paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                 text_column: str | None = None, on_bad_line: str = "error",
                 max_chars: int = STREAM_MAX_CHARS) -> None:
        if on_bad_line not in ON_BAD_LINE:
            raise ConfigError(f"on_bad_line must be 'error' or 'skip', got {on_bad_line!r}")
        self.sources = resolve_sources(paths)  # type: ignore[arg-type]
        self.max_chars = max_chars
        self.bad = BadRows(on_bad_line)
        if self.sources[0].kind == TEXT:
            if text_column not in (None, "text"):
                raise ConfigError(f"{self.sources[0].path}: plain text has no columns; drop "
                                  f"--text-column")
            self.column = "text"
        else:
            cols = {resolve_columns(s, schema_of(s), (text_column,) if text_column else None)
                    for s in self.sources}
            if len(cols) > 1:
                raise DataError(f"{self.sources[0].path}: the files have different text "
                                f"columns ({', '.join(c[0] for c in cols)}); pass --text-column")
            self.column = next(iter(cols))[0]

    @property
    def skipped(self) -> int:
        return self.bad.count

    @property
    def skipped_where(self) -> list[str]:
        return self.bad.where

    def upper_bound(self) -> int:
        """Rows in the sources (bad rows included); a cheap pass (metadata or line counts)."""
        total = 0
        for src in self.sources:
            total += _count_rows(src, self.column)
        return total

    def chunks(self, size: int) -> Iterator[list[str]]:
        buf: list[str] = []
        trimmer = HeapTrimmer(every=8)
        for texts in self._pieces():
            trimmer.tick()
            buf.extend(texts)
            while len(buf) >= size:
                yield buf[:size]
                buf = buf[size:]
        if buf:
            yield buf

    def _pieces(self) -> Iterator[list[str]]:
        for src in self.sources:
            if src.kind == TEXT:
                yield from self._text(src)
            else:
                yield from self._table(src)

    def _text(self, src: Source) -> Iterator[list[str]]:
        import zlib

        try:
            with open_binary(src.path) as f:
                for blk in scan_lines(f, max_chars=self.max_chars):
                    for k in np.flatnonzero(blk.status != 0).tolist():
                        st = blk.status[k]
                        problem = (blk.problems.get(k, "unreadable line") if st == BAD else
                                   "empty line (no text after stripping)" if st == BLANK else
                                   "text too short" if st == SHORT else "bad line")
                        self.bad.add(f"{src.path}:{blk.first_line + k}", problem)
                    yield blk.texts(blk.kept())
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{src.path}: cannot read the file ({err}); check it is intact") from err

    def _table(self, src: Source) -> Iterator[list[str]]:
        for row0, arrays, pre in iter_batches(src, (self.column,), self.bad):
            t, status, problems = clean_column(arrays[self.column], max_chars=self.max_chars,
                                               min_chars=1, column=self.column)
            for k in sorted(problems):
                if k not in pre:
                    self.bad.add(where(src, row0 + k) if self.bad.mode == "error"
                                 or len(self.bad.where) < 20 else "", problems[k])
            keep = np.ones(len(status), dtype=bool)
            keep[list(problems) + list(pre)] = False
            vals = t.to_pylist()
            yield [v for v, k in zip(vals, keep.tolist()) if k]


def _count_rows(src: Source, column: str) -> int:
    if src.kind == TEXT:
        n, last = 0, b"\n"
        with open_binary(src.path) as f:
            while chunk := f.read(1 << 22):
                n += chunk.count(b"\n")
                last = chunk[-1:]
        return n + (last != b"\n")
    if src.kind == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(src.path).metadata.num_rows)
    n = 0
    for _, arrays, _ in iter_batches(src, (column,), BadRows("skip")):
        n += len(arrays[column])
    return n

"""Training corpora in any supported format, indexed once, read batch by batch.

:func:`open_corpus` (and :class:`SentenceCorpus`, its one-text-column form) gives a
:class:`Corpus`: the rows kept after cleaning and dedup, with deterministic, resumable
batches of which each process reads only its own slice.

Cleaning (every format): a value is stripped (Python's ``str.strip``, then a byte-order mark),
cut to ``max_chars`` characters (a guard against pathological lines, not the training
truncation) and dropped when shorter than ``min_chars``. Plain text is split on ``\\n`` only,
decoded as strict UTF-8, and reads at most ``4 * max_chars + 1`` bytes of a line (the rest of
an over-long line is skipped unread); blank lines are dropped and counted. In tabular
sources a row is *bad* when a text column is missing or null, not a string, not valid UTF-8,
holds a NUL, or is empty after stripping; in text a line is bad for invalid UTF-8 or a NUL.
``on_bad_line="error"`` stops at the first bad row with one line ``FILE:LINE: ...`` /
``FILE: row N: ...`` (exit 2 in the CLI); ``"skip"`` drops and counts them.
``dedup=True`` keeps the first occurrence of each distinct cleaned row (64-bit hashes,
:mod:`hashing`; all text columns together).

Index (:mod:`index_build`, :mod:`index_cache`): built in one vectorised pass at the first
start, cached on disk keyed on path, size and mtime, and memory-mapped afterwards, so a second
start costs milliseconds and about no memory, whatever the corpus size.

Batches (:meth:`Corpus.batches`): epoch ``e`` of seed ``s`` visits the rows in the order of a
:class:`~csekit.data.shuffle.FeistelPermutation` of ``range(len(corpus))`` - an exact
permutation (every row once per epoch; the last incomplete global batch is dropped) computed
on demand, so no process holds an N-sized array. ``skip=k`` resumes at batch k; ``rank`` and
``world`` give a process rows ``rank*b:(rank+1)*b`` of each global batch (b = batch/world)
and read only those. Plain ``.gz`` files are decompressed into the index folder once, so
their shuffle is exact too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np

from csekit.data.index_build import build_columns, build_text
from csekit.data.index_cache import get_or_build
from csekit.data.reading import read_line_at
from csekit.data.shuffle import FeistelPermutation
from csekit.data.sources import TEXT, resolve_sources
from csekit.data.tabular import ON_BAD_LINE
from csekit.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DEFAULT_MAX_CHARS = 2000
Row = Union[str, tuple[str, ...]]  # noqa: UP007 - a runtime alias on Python 3.10 too
_READ_CHUNK = 1 << 16


class _TextPart:
    """Lines of one plain file, read by byte offset with ``os.pread``."""

    def __init__(self, path: Path, offsets: np.ndarray, max_chars: int) -> None:
        self.path, self.offsets, self.max_chars = path, offsets, max_chars
        self._fd: int | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    def read(self, idx: np.ndarray) -> list[Row]:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        offs = self.offsets[idx]
        out: list[Row] = [""] * len(idx)
        for j in np.argsort(offs, kind="stable").tolist():  # file order for locality
            try:
                out[j] = read_line_at(self._fd, int(offs[j]), max_chars=self.max_chars)
            except ValueError as err:
                raise DataError(f"{self.path}: the file changed after it was indexed ({err}); "
                                f"restart the run") from err
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _ColumnPart:
    """Cleaned text columns stored back to back in the index folder (memory-mapped)."""

    def __init__(self, folder: Path, ncols: int, n: int) -> None:
        self.n = n
        self.data = [np.memmap(folder / f"col-{j}.utf8", dtype=np.uint8, mode="r")
                     if (folder / f"col-{j}.utf8").stat().st_size else np.empty(0, np.uint8)
                     for j in range(ncols)]
        self.offs = [np.load(folder / f"col-{j}.off.npy", mmap_mode="r") for j in range(ncols)]
        keep = folder / "keep.npy"
        self.keep = np.load(keep, mmap_mode="r") if keep.is_file() else None

    def __len__(self) -> int:
        return self.n

    def read(self, idx: np.ndarray) -> list[Row]:
        ids = np.asarray(self.keep[idx]) if self.keep is not None else idx
        cols = []
        for data, offs in zip(self.data, self.offs):
            s, e = np.asarray(offs[ids]), np.asarray(offs[ids + 1])
            cols.append([data[a:b].tobytes().decode("utf-8") for a, b in zip(s.tolist(), e.tolist())])
        if len(cols) == 1:
            return list(cols[0])
        return [tuple(r) for r in zip(*cols)]

    def close(self) -> None:
        pass


class Corpus:
    """The kept rows of one or more sources; see the module docstring for every rule.

    Rows are ``str`` for one text column and ``tuple[str, ...]`` (in ``columns`` order) for
    several. ``stats`` counts what was read, dropped and kept; ``bad_rows`` names the first
    skipped bad rows (``FILE:LINE`` or ``FILE: row N``).
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        text_columns: Sequence[str] | str | None = None,
        dedup: bool = False,
        on_bad_line: Literal["error", "skip"] = "error",
        min_chars: int = 1,
        max_chars: int = DEFAULT_MAX_CHARS,
    ) -> None:
        if on_bad_line not in ON_BAD_LINE:
            raise ConfigError(f"on_bad_line must be 'error' or 'skip', got {on_bad_line!r}")
        if min_chars < 1 or max_chars < min_chars:
            raise ConfigError(f"need 1 <= min_chars <= max_chars, got {min_chars} and {max_chars}")
        if isinstance(text_columns, str):
            text_columns = (text_columns,)
        self.sources = resolve_sources(paths)  # type: ignore[arg-type]
        self.path = self.sources[0].path
        self.dedup, self.on_bad_line = dedup, on_bad_line
        self.min_chars, self.max_chars = min_chars, max_chars
        self.columns = self._columns(tuple(text_columns) if text_columns else None)
        self._fingerprints = [s.fingerprint() for s in self.sources]
        desc = {"sources": [[s.kind, fp] for s, fp in zip(self.sources, self._fingerprints)],
                "columns": list(self.columns), "dedup": dedup, "on_bad_line": on_bad_line,
                "min_chars": min_chars, "max_chars": max_chars}
        self.index_dir, meta = get_or_build(desc, self._build)
        self.stats: dict[str, int] = dict(meta["stats"])
        self.bad_rows: list[str] = list(meta.get("bad_where", []))
        self.bad_line_numbers: list[int] = list(meta.get("bad_line_numbers", []))
        self.index_build_seconds: float = float(meta.get("build_seconds", 0.0))
        self._parts = self._open_parts(meta)
        self._cum = np.cumsum([0] + [len(p) for p in self._parts])
        if self.stats.get("bad_lines") or self.stats.get("bad_rows"):
            logger.warning("%s: skipped %d bad rows (first: %s)", self.path,
                           self.stats.get("bad_lines", 0) + self.stats.get("bad_rows", 0),
                           "; ".join(self.bad_rows[:3]))
        if not len(self):
            raise DataError(self._empty_message())
        logger.info("%s: %d rows (%s)", self.path if len(self.sources) == 1 else
                    f"{len(self.sources)} files", len(self),
                    ", ".join(f"{k}={v}" for k, v in self.stats.items()))

    # ------------------------------------------------------------------ set-up
    def _columns(self, requested: tuple[str, ...] | None) -> tuple[str, ...]:
        if self.sources[0].kind == TEXT:
            if requested and requested != ("text",):
                raise ConfigError(f"{self.path}: plain text has one sentence per line and no "
                                  f"columns; drop --text-column (or give JSONL/CSV/Parquet)")
            return ("text",)
        from csekit.data.tabular import resolve_columns, schema_of

        chosen = None
        for src in self.sources:
            cols = resolve_columns(src, schema_of(src), requested)
            if chosen is not None and cols != chosen:
                raise DataError(f"{src.path}: text column {cols[0]!r} differs from "
                                f"{chosen[0]!r} in {self.path}; pass --text-column")
            chosen = cols
        assert chosen is not None
        return chosen

    def _build(self, folder: Path) -> dict[str, Any]:
        kw = {"dedup": self.dedup, "on_bad_line": self.on_bad_line,
              "min_chars": self.min_chars, "max_chars": self.max_chars}
        if self.sources[0].kind == TEXT:
            return build_text(self.sources, folder, **kw)  # type: ignore[arg-type]
        return build_columns(self.sources, self.columns, folder, **kw)  # type: ignore[arg-type]

    def _open_parts(self, meta: dict[str, Any]) -> list[_TextPart | _ColumnPart]:
        if meta["kind"] == "text":
            parts: list[_TextPart | _ColumnPart] = []
            for i, (src, p) in enumerate(zip(self.sources, meta["parts"])):
                path = self.index_dir / p["data"] if p["data"] else src.path
                offsets = np.load(self.index_dir / f"offsets-{i}.npy", mmap_mode="r")
                parts.append(_TextPart(path, offsets, self.max_chars))
            return parts
        return [_ColumnPart(self.index_dir, len(self.columns), meta["parts"][0]["n"])]

    def _empty_message(self) -> str:
        s = self.stats
        if "lines" in s:
            return (f"{self.path}: no sentences in the corpus ({s['lines']} lines: {s['blank']} "
                    f"blank, {s['too_short']} shorter than {self.min_chars} chars, "
                    f"{s['bad_lines']} bad); give a file with one sentence per line")
        return (f"{self.path}: no rows with text left ({s['rows']} rows: {s['bad_rows']} bad, "
                f"{s['too_short']} shorter than {self.min_chars} chars)")

    def _check_unchanged(self) -> None:
        for src, fp in zip(self.sources, self._fingerprints):
            if src.fingerprint() != fp:
                raise DataError(f"{src.path}: the file changed after it was indexed; restart "
                                f"the run")

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        """Rows kept after cleaning and de-duplication."""
        return int(self._cum[-1])

    def num_batches(self, batch_size: int) -> int:
        """Full global batches per epoch (the last incomplete batch is dropped)."""
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        return len(self) // batch_size

    def check_batch_size(self, batch_size: int) -> None:
        """Raise DataError when the corpus cannot fill one global batch of ``batch_size``."""
        if self.num_batches(batch_size) == 0:
            raise DataError(f"{self.path}: {len(self)} sentences, fewer than one global batch of "
                            f"{batch_size}; use a smaller --batch-size or a larger corpus")

    # ------------------------------------------------------------------ reading
    def rows(self, idx: np.ndarray | Sequence[int]) -> list[Row]:
        """The rows with the given global indices (0 <= i < len), in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"row index out of range 0..{len(self) - 1}")
        if len(self._parts) == 1:
            return self._parts[0].read(idx)
        part = np.searchsorted(self._cum, idx, side="right") - 1
        out: list[Row] = [""] * len(idx)
        for p in np.unique(part).tolist():
            where = np.flatnonzero(part == p)
            for j, row in zip(where.tolist(), self._parts[p].read(idx[where] - self._cum[p])):
                out[j] = row
        return out

    def __iter__(self) -> Iterator[Row]:
        """Every kept row in source order."""
        self._check_unchanged()
        for a in range(0, len(self), _READ_CHUNK):
            yield from self.rows(np.arange(a, min(a + _READ_CHUNK, len(self))))

    def batches(self, batch_size: int, *, seed: int, epoch: int = 0, skip: int = 0,
                shuffle: bool = True, rank: int = 0, world: int = 1) -> Iterator[list[Row]]:
        """Batches of one epoch, deterministic in (seed, epoch); see the module docstring.

        Yields this process's ``batch_size // world`` rows of each global batch (all of it for
        ``world=1``); concatenating the slices of ranks 0..world-1 gives the global batch.
        ``skip=k`` yields exactly batches ``k, k+1, ...`` of ``skip=0`` (resume).
        """
        self.check_batch_size(batch_size)
        if world < 1 or not 0 <= rank < world or batch_size % world:
            raise ConfigError(f"rank {rank} of {world} processes cannot split a global batch "
                              f"of {batch_size}")
        n_batches = self.num_batches(batch_size)
        if not 0 <= skip <= n_batches:
            raise ConfigError(f"skip={skip} is outside 0..{n_batches} batches of this epoch")
        self._check_unchanged()
        perm = FeistelPermutation(len(self), seed, epoch) if shuffle else None
        local = batch_size // world
        for b in range(skip, n_batches):
            start = b * batch_size + rank * local
            pos = np.arange(start, start + local, dtype=np.int64)
            yield self.rows(perm[pos] if perm is not None else pos)

    def close(self) -> None:
        for p in self._parts:
            p.close()

    def describe(self) -> dict[str, Any]:
        """What `csekit data check` prints."""
        return {"files": [str(s.path) for s in self.sources],
                "format": self.sources[0].kind if self.sources[0].kind != TEXT else
                ("text.gz" if self.sources[0].gzip else "text"),
                "columns": list(self.columns), **self.stats,
                "index": str(self.index_dir)}


def open_corpus(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                text_columns: Sequence[str] | str | None = None, dedup: bool = False,
                on_bad_line: Literal["error", "skip"] = "error", min_chars: int = 1,
                max_chars: int = DEFAULT_MAX_CHARS) -> Corpus:
    """A :class:`Corpus` of ``paths`` (file, folder, glob, comma-separated, or a list)."""
    return Corpus(paths, text_columns=text_columns, dedup=dedup, on_bad_line=on_bad_line,
                  min_chars=min_chars, max_chars=max_chars)


class SentenceCorpus(Corpus):
    """A corpus of one text column (rows are ``str``): plain text, or the unambiguous (or
    ``text_column``) column of a tabular source."""

    def __init__(self, path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                 text_column: str | None = None, dedup: bool = False,
                 on_bad_line: Literal["error", "skip"] = "error", min_chars: int = 1,
                 max_chars: int = DEFAULT_MAX_CHARS) -> None:
        super().__init__(path, text_columns=(text_column,) if text_column else None, dedup=dedup,
                         on_bad_line=on_bad_line, min_chars=min_chars, max_chars=max_chars)
        if len(self.columns) != 1:
            raise ConfigError(f"{self.path}: SentenceCorpus reads one text column, got "
                              f"{list(self.columns)}")



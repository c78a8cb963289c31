"""A streamed one-sentence-per-line training corpus with deterministic, resumable batching."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from csekit.data.reading import is_gzip, iter_lines, read_line_at
from csekit.data.shuffle import buffered_shuffle, make_rng, permutation
from csekit.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

ON_BAD_LINE: tuple[str, ...] = ("error", "skip")  # what a bad line does: stop, or skip and count
DEFAULT_MAX_CHARS = 2000
DEFAULT_SHUFFLE_BUFFER = 1 << 20
_MAX_REPORTED_BAD = 20
_HINT = "fix the file or pass --on-bad-line skip (on_bad_line='skip') to skip and count bad lines"


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class SentenceCorpus:
    """One sentence per line, plain text or ``.gz``, indexed in one streaming pass.

    Cleaning: each line is split on ``\\n`` only, decoded as strict UTF-8, cut to ``max_chars``
    characters and stripped; lines shorter than ``min_chars`` after stripping (blank lines
    included) are dropped. ``max_chars`` (default 2000) is a guard against pathological lines,
    not the training truncation (the tokenizer truncates to ``max_seq_len`` tokens): at most
    ``4 * max_chars + 1`` bytes of a line are read into memory and the rest of an over-long line
    is skipped unread, so a single 10 MB line costs one bounded read. Only the kept prefix is
    validated. ``dedup=True`` keeps the first occurrence of each distinct cleaned sentence, using
    8-byte BLAKE2b hashes (8 bytes per sentence during indexing; a false duplicate needs a 64-bit
    collision, probability about n^2 / 2^65, i.e. 3e-8 for a million sentences).

    Bad lines (a NUL byte or invalid UTF-8 in the kept prefix): ``on_bad_line="error"`` raises a
    one-line :class:`~csekit.errors.DataError` naming ``FILE:LINE``; ``"skip"`` drops them and
    counts them in ``stats["bad_lines"]`` (first line numbers in ``bad_line_numbers``).
    A corpus with no sentence left raises DataError.

    Memory: the index holds one int64 byte offset per kept sentence (8 MB per million), never
    the text. Batches re-read their lines by offset.

    Shuffling (``batches``): plain files get an exact uniform global permutation per
    (seed, epoch). A ``.gz`` file cannot be read at random offsets; if it has at most
    ``shuffle_buffer`` sentences they are loaded and given the very same permutation as the
    plain file would get (identical batches); a larger ``.gz`` is shuffled approximately through
    a seeded buffer of ``shuffle_buffer`` sentences (still deterministic and resumable, but not
    a uniform permutation: decompress it for an exact shuffle).

    Batches are global and identical on every process; the last incomplete batch of an epoch
    is dropped, so an epoch has ``len(corpus) // batch_size`` batches.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        dedup: bool = False,
        on_bad_line: Literal["error", "skip"] = "error",
        min_chars: int = 1,
        max_chars: int = DEFAULT_MAX_CHARS,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    ) -> None:
        if on_bad_line not in ON_BAD_LINE:
            raise ConfigError(f"on_bad_line must be 'error' or 'skip', got {on_bad_line!r}")
        if min_chars < 1 or max_chars < min_chars:
            raise ConfigError(f"need 1 <= min_chars <= max_chars, got {min_chars} and {max_chars}")
        if shuffle_buffer < 1:
            raise ConfigError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: training file not found (expected one sentence per line)")
        self.dedup = dedup
        self.on_bad_line = on_bad_line
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.shuffle_buffer = shuffle_buffer
        self.is_gzip = is_gzip(self.path)
        self.bad_line_numbers: list[int] = []
        self.stats: dict[str, int] = {}
        self._offsets = self._build_index()

    # ------------------------------------------------------------------ indexing
    def _build_index(self) -> np.ndarray:
        start = time.perf_counter()
        st = self.path.stat()
        self._fingerprint = (st.st_size, st.st_mtime_ns)
        offsets = array("q")
        hashes = array("Q")
        stats = {"lines": 0, "blank": 0, "too_short": 0, "bad_lines": 0, "truncated": 0, "duplicates": 0}
        try:
            for line in iter_lines(self.path, max_chars=self.max_chars):
                stats["lines"] += 1
                text = line.text
                if text is None:
                    if self.on_bad_line == "error":
                        raise DataError(f"{self.path}:{line.lineno}: {line.problem}; {_HINT}")
                    stats["bad_lines"] += 1
                    if len(self.bad_line_numbers) < _MAX_REPORTED_BAD:
                        self.bad_line_numbers.append(line.lineno)
                    continue
                if len(text) < self.min_chars:
                    stats["blank" if not text else "too_short"] += 1
                    continue
                stats["truncated"] += line.truncated
                offsets.append(line.offset)
                if self.dedup:
                    hashes.append(_hash64(text))
        except (OSError, EOFError) as err:  # unreadable file, corrupt or cut .gz stream
            raise DataError(f"{self.path}: cannot read the file ({err}); check it is intact") from err
        index = np.frombuffer(offsets, dtype=np.int64) if offsets else np.empty(0, np.int64)
        if self.dedup and len(index):
            _, first = np.unique(np.frombuffer(hashes, dtype=np.uint64), return_index=True)
            keep = np.sort(first)
            stats["duplicates"] = len(index) - len(keep)
            index = index[keep]
        stats["sentences"] = len(index)
        self.stats = stats
        if stats["bad_lines"]:
            logger.warning("%s: skipped %d bad lines (first at lines %s)", self.path,
                           stats["bad_lines"], ", ".join(map(str, self.bad_line_numbers[:5])))
        if not len(index):
            raise DataError(f"{self.path}: no sentences in the corpus ({stats['lines']} lines: "
                            f"{stats['blank']} blank, {stats['too_short']} shorter than "
                            f"{self.min_chars} chars, {stats['bad_lines']} bad); "
                            "give a file with one sentence per line")
        logger.info("%s: %d sentences indexed in %.1fs (%s)", self.path, len(index),
                    time.perf_counter() - start, ", ".join(f"{k}={v}" for k, v in stats.items()))
        return np.ascontiguousarray(index)

    def _check_unchanged(self) -> None:
        st = self.path.stat()
        if (st.st_size, st.st_mtime_ns) != self._fingerprint:
            raise DataError(f"{self.path}: the file changed after it was indexed; restart the run")

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        """Number of sentences kept after cleaning and de-duplication."""
        return len(self._offsets)

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
    def __iter__(self) -> Iterator[str]:
        """The kept sentences in file order (streamed)."""
        self._check_unchanged()
        offsets = self._offsets
        j = 0
        for line in iter_lines(self.path, max_chars=self.max_chars):
            if j == len(offsets):
                return
            if line.offset == offsets[j]:
                j += 1
                yield line.text  # type: ignore[misc]  # validated while indexing

    def batches(
        self, batch_size: int, *, seed: int, epoch: int = 0, skip: int = 0, shuffle: bool = True
    ) -> Iterator[list[str]]:
        """Global batches of one epoch, deterministic in (seed, epoch).

        ``skip`` is the number of batches already consumed in this epoch: ``batches(..., skip=k)``
        yields exactly the batches ``k, k+1, ...`` of ``batches(..., skip=0)`` (resume).
        ``shuffle=False`` keeps file order.
        """
        self.check_batch_size(batch_size)
        n_batches = self.num_batches(batch_size)
        if not 0 <= skip <= n_batches:
            raise ConfigError(f"skip={skip} is outside 0..{n_batches} batches of this epoch")
        self._check_unchanged()
        if self.is_gzip and len(self) > self.shuffle_buffer and shuffle:
            yield from self._buffered_batches(batch_size, seed, epoch, skip, n_batches)
            return
        n = len(self)
        order = permutation(n, seed, epoch) if shuffle else np.arange(n, dtype=np.int64)
        if self.is_gzip:  # small enough to hold: same permutation as the plain file
            sentences = list(self)
            for b in range(skip, n_batches):
                yield [sentences[i] for i in order[b * batch_size:(b + 1) * batch_size]]
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for b in range(skip, n_batches):
                offs = self._offsets[order[b * batch_size:(b + 1) * batch_size]]
                batch: list[str] = [""] * batch_size
                for j in np.argsort(offs, kind="stable"):  # read in file order for locality
                    try:
                        batch[j] = read_line_at(fd, int(offs[j]), max_chars=self.max_chars)
                    except ValueError as err:
                        raise DataError(f"{self.path}: the file changed after it was indexed "
                                        f"({err}); restart the run") from err
                yield batch
        finally:
            os.close(fd)

    def _buffered_batches(self, batch_size: int, seed: int, epoch: int, skip: int,
                          n_batches: int) -> Iterator[list[str]]:
        stream = buffered_shuffle(iter(self), self.shuffle_buffer, make_rng(seed, epoch))
        batch: list[str] = []
        b = 0
        for sentence in stream:
            batch.append(sentence)
            if len(batch) == batch_size:
                if b >= skip:
                    yield batch
                b += 1
                batch = []
                if b == n_batches:
                    return

"""Vectorised scan of one-sentence-per-line text: the cleaning rules of :mod:`reading`, in numpy.

A stream of bytes is cut into blocks of complete lines (``block_bytes`` at a time). For each
block numpy finds the line ends and drops a trailing ``\r``; one ``bytes.decode`` validates
the whole block as UTF-8 and one ``bytes.find`` looks for NUL. A line is *fast* when its first
and last bytes are printable ASCII (so ``str.strip`` has nothing to strip: every whitespace
character Python strips is either ASCII whitespace or non-ASCII) and its byte length ``L``
satisfies ``4 * min_chars <= L <= max_chars`` (so its character count, between L/4 and L,
can be neither under ``min_chars`` nor over ``max_chars``): its cleaned text is exactly its
bytes. Every other line (leading/trailing whitespace, a byte-order mark, very short or long,
over the byte cap, a NUL, or in a block that is not valid UTF-8) takes the *exact* path,
:func:`reading.decode_line` in Python. The result is identical to the per-line reader, line for
line; on ordinary text nearly every line is fast.

An over-long line is never held whole: beyond its first ``4 * max_chars + 1`` bytes it is
drained unread, exactly as :func:`reading.read_capped` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from csekit.data.hashing import hash_ranges, hash_strings
from csekit.data.reading import decode_line

KEPT, BLANK, SHORT, BAD = 0, 1, 2, 3
BLOCK_BYTES = 1 << 18

_EDGE_OK = np.zeros(256, dtype=bool)
_EDGE_OK[33:127] = True  # printable ASCII, not whitespace


@dataclass
class LineBlock:
    """Complete lines ``buf`` starting at byte ``base`` of the stream, line ``first_line``."""

    buf: bytes
    base: int
    first_line: int
    starts: np.ndarray  # int64 (n,) line starts within buf
    status: np.ndarray  # uint8 (n,) KEPT | BLANK | SHORT | BAD
    ts: np.ndarray  # int64 (n,) cleaned text range within buf (fast lines)
    te: np.ndarray
    truncated: np.ndarray  # bool (n,)
    slow: dict[int, str] = field(default_factory=dict)  # cleaned text of exact-path lines
    problems: dict[int, str] = field(default_factory=dict)  # BAD lines: what is wrong

    def __len__(self) -> int:
        return len(self.starts)

    def kept(self) -> np.ndarray:
        return np.flatnonzero(self.status == KEPT)

    def texts(self, which: np.ndarray) -> list[str]:
        """Cleaned text of the given (kept) lines."""
        out = []
        for i in which.tolist():
            s = self.slow.get(i)
            out.append(s if s is not None else self.buf[self.ts[i]:self.te[i]].decode("utf-8"))
        return out

    def hashes(self, which: np.ndarray) -> np.ndarray:
        """Dedup hashes of the given (kept) lines: :func:`hashing.hash_ranges` of their text."""
        arr = np.frombuffer(self.buf, dtype=np.uint8)
        h = hash_ranges(arr, self.ts[which], self.te[which])
        if self.slow:
            slow = np.flatnonzero(np.isin(which, np.fromiter(self.slow, dtype=np.int64)))
            if slow.size:
                h[slow] = hash_strings([self.slow[int(which[j])] for j in slow.tolist()])
        return h


def _scan(buf: bytes, base: int, first_line: int, *, max_chars: int, min_chars: int,
          over_long_tail: bool = False) -> LineBlock:
    """Scan ``buf`` (complete lines; the last one may lack its newline)."""
    cap = 4 * max_chars
    arr = np.frombuffer(buf, dtype=np.uint8)
    nl = np.flatnonzero(arr == 10)
    ends = nl if (len(arr) and arr[-1] == 10) else np.append(nl, len(arr))
    n = len(ends)
    starts = np.zeros(n, dtype=np.int64)
    starts[1:] = ends[:-1] + 1
    ends = ends.astype(np.int64)
    lens = ends - starts
    te = ends.copy()
    cr = np.flatnonzero(lens > 0)
    cr = cr[arr[te[cr] - 1] == 13]
    te[cr] -= 1
    tl = te - starts
    blank = tl == 0
    nb = ~blank
    safe = np.maximum(te - 1, 0)
    fast = nb & (tl >= 4 * min_chars) & (tl <= max_chars)
    fast &= _EDGE_OK[arr[np.minimum(starts, max(len(arr) - 1, 0))]] & _EDGE_OK[arr[safe]]
    truncated = lens > cap
    slow_mask = nb & ~fast
    if buf.find(b"\x00") >= 0:
        nul = np.flatnonzero(arr == 0)
        slow_mask[np.searchsorted(starts, nul, side="right") - 1] = True
    try:
        buf.decode("utf-8")
    except UnicodeDecodeError:
        slow_mask = nb.copy()
    status = np.where(blank, BLANK, KEPT).astype(np.uint8)
    block = LineBlock(buf, base, first_line, starts, status, starts.copy(), te, truncated)
    for i in np.flatnonzero(slow_mask).tolist():
        s, e = int(starts[i]), int(ends[i])
        cut = truncated[i] or (over_long_tail and i == n - 1)
        raw = buf[s:s + cap] if truncated[i] else buf[s:e]
        text, problem, was_cut = decode_line(raw, truncated=bool(cut), max_chars=max_chars)
        block.truncated[i] = was_cut
        if text is None:
            block.status[i] = BAD
            block.problems[i] = problem or "unreadable line"
        elif not text:
            block.status[i] = BLANK
        elif len(text) < min_chars:
            block.status[i] = SHORT
        else:
            block.status[i] = KEPT
            block.slow[i] = text
    return block


def scan_lines(f: BinaryIO, *, max_chars: int, min_chars: int = 1,
               block_bytes: int = BLOCK_BYTES, sink: BinaryIO | None = None) -> Iterator[LineBlock]:
    """Blocks of complete lines read from ``f``; every byte read is also written to ``sink``.

    Byte offsets (``base + starts``) are positions in the stream as read (decompressed for
    .gz), so a ``sink`` copy of a .gz stream can be read at those offsets.
    """
    cap = 4 * max_chars
    pending = b""
    base = 0
    line = 1
    while True:
        chunk = f.read(block_bytes)
        if sink is not None and chunk:
            sink.write(chunk)
        data = pending + chunk if pending else chunk
        if not chunk:  # end of stream: the rest is one last line without a newline
            if data:
                yield _scan(data, base, line, max_chars=max_chars, min_chars=min_chars)
            return
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            if len(data) <= cap:
                pending = data
                continue
            # One line longer than the byte cap and than this block: keep its capped head and
            # drain the rest unread (bounded memory), as reading.read_capped does.
            head, consumed = data[:cap + 1], len(data)
            rest = b""
            while True:
                more = f.read(block_bytes)
                if sink is not None and more:
                    sink.write(more)
                if not more:
                    break
                k = more.find(b"\n")
                if k >= 0:
                    consumed += k + 1
                    rest = more[k + 1:]
                    break
                consumed += len(more)
            blk = _scan(head, base, line, max_chars=max_chars, min_chars=min_chars,
                        over_long_tail=True)
            blk.truncated[:] = True
            yield blk
            base += consumed
            line += 1
            pending = rest
            continue
        complete, pending = data[:cut], data[cut:]
        blk = _scan(complete, base, line, max_chars=max_chars, min_chars=min_chars)
        yield blk
        base += len(complete)
        line += len(blk)  # complete lines: one per newline

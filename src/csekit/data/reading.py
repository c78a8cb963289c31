"""Low-level line reading for corpora: bounded memory per line, strict validation.

A corpus is read as bytes and split on ``b"\\n"`` only (so Unicode line separators such as
U+2028 inside a sentence do not split it). Each line is read with a byte cap: at most
``4 * max_chars + 1`` bytes of a line are held in memory, the remainder of an over-long line
is skipped in 64 KiB chunks without being decoded or checked, and the stripped text is cut to
``max_chars`` characters (leading whitespace counts against the byte cap). A pathological
10 MB single line therefore costs one bounded read, not 10 MB of decoding or tokenising.

Validation of the kept prefix: a NUL byte or invalid UTF-8 makes the line *bad*; the caller
decides whether that is an error or a counted skip.
"""

from __future__ import annotations

import codecs
import gzip
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_SKIP_CHUNK = 1 << 16
_BOM = "\ufeff"


def open_binary(path: Path) -> BinaryIO:
    """Open a plain or gzip-compressed (``.gz`` suffix) file for binary reading."""
    if path.suffix == ".gz":
        return io.BufferedReader(gzip.open(path, "rb"), buffer_size=1 << 20)  # type: ignore[arg-type]
    return open(path, "rb", buffering=1 << 20)


def is_gzip(path: Path) -> bool:
    return path.suffix == ".gz"


@dataclass
class RawLine:
    """One physical line: ``text`` is None when the line is bad (``problem`` says why)."""

    lineno: int  # 1-based physical line number
    offset: int  # byte offset of the line start in the (decompressed) stream
    text: str | None
    problem: str | None = None
    truncated: bool = False


def read_capped(f: BinaryIO, cap_bytes: int) -> tuple[bytes, int, bool]:
    """Read one line keeping at most ``cap_bytes`` bytes of it; skip the rest of the line.

    Returns (kept bytes without the trailing newline, bytes consumed including the newline,
    whether content was dropped). ``bytes consumed`` is 0 only at end of file.
    """
    head = f.readline(cap_bytes + 1)
    if not head:
        return b"", 0, False
    if head.endswith(b"\n"):
        return head[:-1], len(head), False
    consumed = len(head)
    if len(head) <= cap_bytes:  # last line of the file, without a newline
        return head, consumed, False
    head = head[:cap_bytes]  # the (cap_bytes + 1)-th byte is content and is dropped
    while True:  # drain the remainder of the over-long line in bounded chunks
        rest = f.readline(_SKIP_CHUNK)
        consumed += len(rest)
        if not rest or rest.endswith(b"\n"):
            break
    return head, consumed, True


def decode_line(raw: bytes, *, truncated: bool, max_chars: int) -> tuple[str | None, str | None, bool]:
    """Validate, decode, strip (whitespace and a byte-order mark) and cut one line.

    Returns (text, None, cut) for a good line, (None, problem, False) for a bad one. ``cut`` is
    True when characters were dropped (byte cap or ``max_chars``).
    """
    nul = raw.find(b"\x00")
    if nul >= 0:
        return None, f"NUL byte at byte {nul + 1} of the line", False
    try:
        if truncated:
            # The byte cap may fall inside a multi-byte character: decode incrementally so an
            # incomplete tail is dropped instead of being reported as invalid.
            text = codecs.getincrementaldecoder("utf-8")("strict").decode(raw, final=False)
        else:
            text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"invalid UTF-8 at byte {err.start + 1} of the line", False
    text = text.strip()
    if text.startswith(_BOM):
        text = text[1:].strip()
    cut = truncated
    if len(text) > max_chars:
        text, cut = text[:max_chars].rstrip(), True
    return text, None, cut


def iter_lines(path: Path, *, max_chars: int) -> Iterator[RawLine]:
    """Yield every physical line of ``path`` (plain or .gz) with bounded memory per line."""
    cap = 4 * max_chars  # UTF-8 needs at most 4 bytes per character
    with open_binary(path) as f:
        offset = 0
        lineno = 0
        while True:
            raw, consumed, truncated = read_capped(f, cap)
            if consumed == 0:
                return
            lineno += 1
            text, problem, cut = decode_line(raw, truncated=truncated, max_chars=max_chars)
            yield RawLine(lineno, offset, text, problem, cut)
            offset += consumed


def read_line_at(fd: int, offset: int, *, max_chars: int) -> str:
    """Re-read the (already validated) line starting at byte ``offset`` of a plain file.

    ``fd`` is an OS file descriptor; ``os.pread`` avoids refilling a large read buffer on every
    random access. Applies exactly the cap, cut and strip rules of :func:`iter_lines`.
    """
    cap = 4 * max_chars
    chunk = os.pread(fd, min(512, cap + 1), offset)
    nl = chunk.find(b"\n")
    if nl < 0 and len(chunk) == min(512, cap + 1) and len(chunk) < cap + 1:
        chunk = os.pread(fd, cap + 1, offset)
        nl = chunk.find(b"\n")
    if nl >= 0:
        raw, truncated = chunk[:nl], False
    elif len(chunk) > cap:
        raw, truncated = chunk[:cap], True
    else:  # last line of the file, without a newline
        raw, truncated = chunk, False
    text, problem, _ = decode_line(raw, truncated=truncated, max_chars=max_chars)
    if text is None:
        raise ValueError(problem)
    return text

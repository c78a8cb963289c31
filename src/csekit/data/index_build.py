"""Building a corpus index (once; see :mod:`index_cache`): the scan, the cleaning, dedup.

Plain text (``kind="text"``): one int64 byte offset per kept line, per file
(``offsets-<i>.npy``); batches re-read their lines by offset. A ``.gz`` file is decompressed
into the index folder during the same scan (``data-<i>.txt``), so it is read at random
offsets exactly like a plain file.

Tabular sources (``kind="columns"``): the cleaned text of the kept rows, column by column, in
``col-<j>.utf8`` (UTF-8 bytes back to back) and ``col-<j>.off.npy`` (int64 offsets, n + 1);
with dedup, ``keep.npy`` lists the kept row ids.

Memory while building: one block of text (1 MiB) or one Arrow batch (65,536 rows) at a time,
plus the dedup buckets of :class:`hashing.Deduplicator` one at a time; offsets stream to disk.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from csekit.data.hashing import Deduplicator, KeepBits, combine, hash_ranges
from csekit.data.memory import HeapTrimmer, trim_heap
from csekit.data.reading import open_binary
from csekit.data.sources import Source
from csekit.data.tabular import BadRows, clean_column, iter_batches, where
from csekit.data.textscan import BAD, BLANK, SHORT, scan_lines
from csekit.errors import DataError

logger = logging.getLogger(__name__)

_COPY = 1 << 18


def _npy_writer(dest: Path, n: int):
    """An open file with the header of an int64 (n,) .npy written; append the data."""
    f = open(dest, "wb")  # noqa: SIM115
    np.lib.format.write_array_header_1_0(
        f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.int64)), "fortran_order": False,
            "shape": (n,)})
    return f


def _to_npy(raw: Path, dest: Path, keep: KeepBits | None, lo: int) -> int:
    """Copy the int64 values of the raw file ``raw`` (stream ids lo, lo+1, ...) into the .npy
    ``dest``, keeping those in ``keep`` (all when None), _COPY values at a time with plain
    reads and writes (no mapping, so the copy does not stay resident)."""
    size = raw.stat().st_size // 8
    n = keep.count(lo, lo + size) if keep is not None else size
    with _npy_writer(dest, n) as out:
        for a in range(0, size, _COPY):
            chunk = np.fromfile(raw, dtype=np.int64, count=min(_COPY, size - a), offset=8 * a)
            if keep is not None:
                chunk = chunk[keep.range(lo + a, lo + a + len(chunk))]
            out.write(chunk.tobytes())
    raw.unlink()
    return n


def _kept_ids(keep: KeepBits, dest: Path) -> int:
    """Write the ids in ``keep`` into the .npy ``dest`` chunk by chunk."""
    n = keep.count()
    with _npy_writer(dest, n) as out:
        for a in range(0, len(keep), _COPY):
            out.write((np.flatnonzero(keep.range(a, min(len(keep), a + _COPY))) + a).tobytes())
    return n


def build_text(sources: list[Source], folder: Path, *, dedup: bool, on_bad_line: str,
               min_chars: int, max_chars: int) -> dict[str, Any]:
    stats = {"lines": 0, "blank": 0, "too_short": 0, "bad_lines": 0, "truncated": 0,
             "duplicates": 0}
    bad = BadRows(on_bad_line)
    bad_numbers: list[int] = []
    dd = Deduplicator(folder / "dedup") if dedup else None
    trimmer = HeapTrimmer()
    counts = []
    for i, src in enumerate(sources):
        n_cand = 0
        with open(folder / f"cand-{i}.bin", "wb") as cand:
            sink = open(folder / f"data-{i}.txt", "wb") if src.gzip else None  # noqa: SIM115
            try:
                with open_binary(src.path) as f:
                    for blk in scan_lines(f, max_chars=max_chars, min_chars=min_chars, sink=sink):
                        st = blk.status
                        stats["lines"] += len(blk)
                        stats["blank"] += int(np.count_nonzero(st == BLANK))
                        stats["too_short"] += int(np.count_nonzero(st == SHORT))
                        for k in sorted(blk.problems):
                            bad.add(f"{src.path}:{blk.first_line + k}", blk.problems[k])
                            if len(bad_numbers) < 20:
                                bad_numbers.append(blk.first_line + k)
                        stats["bad_lines"] += int(np.count_nonzero(st == BAD))
                        kept = blk.kept()
                        stats["truncated"] += int(np.count_nonzero(blk.truncated[kept]))
                        (blk.base + blk.starts[kept]).astype(np.int64).tofile(cand)
                        n_cand += len(kept)
                        if dd is not None:
                            dd.add(blk.hashes(kept))
                        trimmer.tick()
            except (OSError, EOFError, zlib.error) as err:  # unreadable, corrupt or cut .gz
                raise DataError(f"{src.path}: cannot read the file ({err}); check it is "
                                f"intact") from err
            finally:
                if sink is not None:
                    sink.close()
        counts.append(n_cand)
    keep = dd.keep_mask() if dd is not None else None
    trim_heap()
    parts = []
    lo = 0
    for i, src in enumerate(sources):
        n = _to_npy(folder / f"cand-{i}.bin", folder / f"offsets-{i}.npy", keep, lo)
        lo += counts[i]
        parts.append({"n": n, "data": f"data-{i}.txt" if src.gzip else None})
    if keep is not None:
        stats["duplicates"] = len(keep) - keep.count()
        del keep
        _rmtree(folder / "dedup")
    stats["sentences"] = sum(p["n"] for p in parts)
    return {"kind": "text", "columns": ["text"], "parts": parts, "stats": stats,
            "bad_where": bad.where, "bad_line_numbers": bad_numbers}


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _string_buffers(arr) -> tuple[np.ndarray, np.ndarray]:
    """(int64 offsets (n + 1) starting at 0, uint8 data) of a large_string Arrow array."""
    bufs = arr.buffers()
    offs = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.empty(0, np.uint8)
    return offs - offs[0], data[offs[0]:offs[-1]]


def build_columns(sources: list[Source], columns: tuple[str, ...], folder: Path, *,
                  dedup: bool, on_bad_line: str, min_chars: int, max_chars: int) -> dict[str, Any]:
    stats = {"rows": 0, "bad_rows": 0, "too_short": 0, "duplicates": 0}
    bad = BadRows(on_bad_line)
    dd = Deduplicator(folder / "dedup") if dedup else None
    data_files = [open(folder / f"col-{j}.utf8", "wb") for j in range(len(columns))]  # noqa: SIM115
    off_files = [open(folder / f"col-{j}.off.bin", "wb") for j in range(len(columns))]  # noqa: SIM115
    totals = [0] * len(columns)
    for f in off_files:
        np.zeros(1, np.int64).tofile(f)
    n_cand = 0
    trimmer = HeapTrimmer(every=4)
    try:
        for src in sources:
            for row0, arrays, pre in iter_batches(src, columns, bad):
                n = len(arrays[columns[0]])
                stats["rows"] += n
                status = np.zeros(n, dtype=np.uint8)
                problems = dict(pre)
                cleaned = []
                for c in columns:
                    t, st, pr = clean_column(arrays[c], max_chars=max_chars, min_chars=min_chars,
                                             column=c)
                    status = np.maximum(status, st)
                    for k, v in pr.items():
                        problems.setdefault(k, v)
                    cleaned.append(t)
                for k in sorted(problems):
                    status[k] = BAD
                    if k not in pre:
                        bad.add(where(src, row0 + k) if bad.mode == "error" or
                                len(bad.where) < 20 else "", problems[k])
                stats["bad_rows"] += int(np.count_nonzero(status == BAD))
                stats["too_short"] += int(np.count_nonzero(status == SHORT))
                mask = status == 0
                import pyarrow as pa

                keep_arr = pa.array(mask)
                h = None
                for j, t in enumerate(cleaned):
                    offs, data = _string_buffers(t.filter(keep_arr))
                    data.tofile(data_files[j])
                    (offs[1:] + totals[j]).tofile(off_files[j])
                    totals[j] += len(data)
                    if dd is not None:
                        hj = hash_ranges(data, offs[:-1], offs[1:])
                        h = hj if h is None else combine(h, hj)
                n_cand += int(mask.sum())
                if dd is not None and h is not None:
                    dd.add(h)
                trimmer.tick()
    finally:
        for f in data_files + off_files:
            f.close()
    # rows the CSV reader itself skipped (wrong field count) are counted by ``bad`` only
    stats["rows"] += bad.count - stats["bad_rows"]
    stats["bad_rows"] = bad.count
    keep = dd.keep_mask() if dd is not None else None
    for j in range(len(columns)):
        _to_npy(folder / f"col-{j}.off.bin", folder / f"col-{j}.off.npy", None, 0)
    n = n_cand
    if keep is not None:
        n = _kept_ids(keep, folder / "keep.npy")
        stats["duplicates"] = n_cand - n
        del keep
        _rmtree(folder / "dedup")
    stats["sentences"] = n
    return {"kind": "columns", "columns": list(columns), "parts": [{"n": n}], "stats": stats,
            "bad_where": [w for w in bad.where if w], "bad_line_numbers": []}

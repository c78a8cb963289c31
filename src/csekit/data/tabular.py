"""Readers of tabular sources (JSONL, CSV/TSV, Parquet, ``datasets`` folders) on pyarrow.

Each reader yields Arrow record batches of the chosen text columns, in row order, with the
1-based number of their first row, so that any problem can be named ``FILE: row N``. Rows
are JSON records (blank lines are not rows; the message adds the physical line), CSV data
rows (the header is not counted), Parquet / Arrow rows.

pyarrow does the parsing (multi-threaded C++; Parquet and ``datasets`` folders are read
memory-mapped). Only when pyarrow rejects a JSONL block (invalid JSON, a number where a string
belongs, invalid UTF-8) does the rest of that file go through Python's ``json``, which can say
which line is wrong and, under ``on_bad_line="skip"``, step over it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from csekit.data.sources import CSV, HF, JSONL, PARQUET, TSV, Source
from csekit.errors import DataError, first_line

logger = logging.getLogger(__name__)

BATCH_ROWS = 1 << 16
_BLOCK = 1 << 22
MAX_REPORTED = 20
ON_BAD_LINE: tuple[str, ...] = ("error", "skip")  # what a bad row does: stop, or skip and count
HINT = "fix the file or pass --on-bad-line skip to skip and count bad rows"
_ASCII_WS = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f "
_NAMED = ("text", "sentence")


@dataclass
class BadRows:
    """Counts bad rows; raises on the first one when ``mode == "error"``."""

    mode: str
    count: int = 0
    where: list[str] = field(default_factory=list)

    def add(self, where: str, problem: str) -> None:
        if self.mode == "error":
            raise DataError(f"{where}: {problem}; {HINT}")
        self.count += 1
        if len(self.where) < MAX_REPORTED:
            self.where.append(where)


def _pa():  # imported lazily: plain-text corpora never load pyarrow
    import pyarrow as pa

    return pa


def _is_text_type(t) -> bool:
    pa = _pa()
    return (pa.types.is_string(t) or pa.types.is_large_string(t)
            or (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t))
            or (pa.types.is_dictionary(t) and _is_text_type(t.value_type)))


def _unreadable(src: Source, err: Exception) -> DataError:
    what = {PARQUET: "a readable Parquet file", JSONL: "readable JSON Lines", CSV: "readable CSV",
            TSV: "readable TSV", HF: "a readable `datasets` folder"}[src.kind]
    return DataError(f"{src.path}: not {what} ({first_line(err)[:200]})")


# ---------------------------------------------------------------------- schemas, columns
def _csv_options(src: Source, columns: list[str] | None = None, handler=None):
    import pyarrow.csv as pcsv

    parse = pcsv.ParseOptions(delimiter="\t" if src.kind == TSV else ",",
                              newlines_in_values=True, invalid_row_handler=handler)
    read = pcsv.ReadOptions(block_size=_BLOCK)
    conv = pcsv.ConvertOptions(
        column_types={c: _pa().binary() for c in columns} if columns else None,
        include_columns=columns, strings_can_be_null=False, quoted_strings_can_be_null=False)
    return read, parse, conv


def _hf_table(src: Source):
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(src.path))
    except Exception as err:
        raise _unreadable(src, err) from err
    if isinstance(ds, DatasetDict):
        raise DataError(f"{src.path}: a DatasetDict with splits {', '.join(ds)}; give one "
                        f"split's folder, e.g. {src.path / next(iter(ds))}")
    if not isinstance(ds, Dataset):
        raise DataError(f"{src.path}: not a `datasets` Dataset folder")
    return ds.data.table


def schema_of(src: Source) -> dict[str, str]:
    """Column name -> Arrow type name, as the reader sees the source."""
    pa = _pa()
    try:
        if src.kind == PARQUET:
            import pyarrow.parquet as pq

            schema = pq.read_schema(src.path)
        elif src.kind == HF:
            schema = _hf_table(src).schema
        elif src.kind == JSONL:
            import pyarrow.json as pj

            with pa.input_stream(str(src.path)) as f:
                head = f.read(1 << 20)
            cut = head.rfind(b"\n") + 1 or len(head)
            try:
                schema = pj.read_json(pa.py_buffer(head[:cut])).schema
            except pa.ArrowInvalid:
                schema = _python_schema(head[:cut])
        else:
            import pyarrow.csv as pcsv

            read, parse, conv = _csv_options(src, handler=lambda _row: "skip")
            with pcsv.open_csv(pa.input_stream(str(src.path)), read_options=read,
                               parse_options=parse, convert_options=conv) as reader:
                schema = reader.schema
    except DataError:
        raise
    except (pa.ArrowException, OSError, EOFError, ValueError) as err:
        raise _unreadable(src, err) from err
    return {f.name: str(f.type) for f in schema}


def _python_schema(head: bytes) -> object:
    pa = _pa()
    names: dict[str, object] = {}
    for line in head.splitlines()[:1000]:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            for k, v in rec.items():
                names.setdefault(k, pa.string() if isinstance(v, str) else pa.null())
    return pa.schema(list(names.items()))


def resolve_columns(src: Source, schema: dict[str, str],
                    requested: tuple[str, ...] | None) -> tuple[str, ...]:
    """The text column(s): those requested, else the unambiguous one (see the module doc)."""
    shown = ", ".join(f"{k} ({v})" for k, v in schema.items()) or "none"
    textish = ("string", "large_string", "string_view")
    if requested:
        for c in requested:
            if c not in schema:
                raise DataError(f"{src.path}: no column {c!r} (columns: {shown}); "
                                f"pick one with --text-column")
        return tuple(requested)
    named = [c for c in _NAMED if c in schema]
    if len(named) == 1:
        return (named[0],)
    strings = [k for k, v in schema.items()
               if v in textish or (v.startswith("dictionary<values=") and "string" in v)
               or (src.kind in (CSV, TSV) and v in ("string", "null"))]
    if len(strings) == 1 and not named:
        return (strings[0],)
    raise DataError(f"{src.path}: cannot tell which column holds the text (columns: {shown}); "
                    f"pass --text-column NAME")


# ---------------------------------------------------------------------- reading
def iter_batches(src: Source, columns: tuple[str, ...], bad: BadRows
                 ) -> Iterator[tuple[int, dict[str, object], dict[int, str]]]:
    """(first row number, {column: Arrow array}, {row offset in batch: problem}) in row order.

    Rows already found bad by the reader (JSON that does not parse, a non-string value) are in
    the problems mapping with null values in the arrays.
    """
    pa = _pa()
    row = 1
    it = _raw_batches(src, columns, bad)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except DataError:
            raise
        except (pa.ArrowException, OSError, EOFError, ValueError) as err:
            if src.kind == JSONL:
                yield from _python_jsonl(src, columns, bad, skip_records=row - 1)
                return
            raise _unreadable(src, err) from err
        arrays, problems = item
        n = len(next(iter(arrays.values()))) if arrays else 0
        if n:
            yield row, arrays, problems
        row += n


def _check_types(src: Source, batch, columns: tuple[str, ...]) -> dict[str, object]:
    pa = _pa()
    out = {}
    for c in columns:
        if c not in batch.schema.names:
            raise DataError(f"{src.path}: no column {c!r} (columns: "
                            f"{', '.join(batch.schema.names)}); pick one with --text-column")
        arr = batch.column(c)
        t = arr.type
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            out[c] = arr
        elif _is_text_type(t):
            out[c] = arr.cast(pa.large_string()) if pa.types.is_dictionary(t) else arr
        elif pa.types.is_null(t):
            out[c] = pa.nulls(len(arr), pa.large_string())
        else:
            raise DataError(f"{src.path}: row 1: column {c!r} holds {t} values, not text; "
                            f"pick the text column with --text-column")
    return out


def _raw_batches(src: Source, columns: tuple[str, ...], bad: BadRows):
    pa = _pa()
    cols = list(columns)
    if src.kind == PARQUET:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(src.path, memory_map=True)
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=cols):
            yield _check_types(src, batch, columns), {}
    elif src.kind == HF:
        table = _hf_table(src)
        missing = [c for c in cols if c not in table.schema.names]
        if missing:
            _check_types(src, table.slice(0, 0), columns)
        for batch in table.select(cols).to_batches(max_chunksize=BATCH_ROWS):
            yield _check_types(src, batch, columns), {}
    elif src.kind == JSONL:
        import pyarrow.json as pj

        schema = pa.schema([(c, pa.string()) for c in cols])
        opts = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        reader = pj.open_json(pa.input_stream(str(src.path)),
                              read_options=pj.ReadOptions(block_size=_BLOCK), parse_options=opts)
        for batch in reader:
            yield _check_types(src, batch, columns), {}
    else:
        import pyarrow.csv as pcsv

        def handler(invalid) -> str:
            if bad.mode == "error":  # pyarrow's own error names the row: "Row #N: Expected..."
                return "error"
            bad.add(f"{src.path}: a row", f"{invalid.actual_columns} fields where the header "
                    f"has {invalid.expected_columns} ({invalid.text[:60]!r})")
            return "skip"

        read, parse, conv = _csv_options(src, cols, handler)
        reader = pcsv.open_csv(pa.input_stream(str(src.path)), read_options=read,
                               parse_options=parse, convert_options=conv)
        for batch in reader:
            yield _check_types(src, batch, columns), {}


def _python_jsonl(src: Source, columns: tuple[str, ...], bad: BadRows, *, skip_records: int
                  ) -> Iterator[tuple[int, dict[str, object], dict[int, str]]]:
    """The exact (slow) JSONL path from record ``skip_records + 1`` on."""
    pa = _pa()
    import gzip

    opener = gzip.open if src.path.suffix == ".gz" else open
    record = 0
    first = skip_records + 1
    values: dict[str, list[str | None]] = {c: [] for c in columns}
    problems: dict[int, str] = {}

    def flush() -> tuple[int, dict[str, object], dict[int, str]]:
        arrays = {c: pa.array(v, type=pa.large_string()) for c, v in values.items()}
        return first, arrays, dict(problems)

    try:
        with opener(src.path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                record += 1
                if record <= skip_records:
                    continue
                where = f"{src.path}: row {record} (line {lineno})"
                problem = None
                rec = None
                try:
                    rec = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as err:
                    problem = f"invalid UTF-8 at byte {err.start + 1} of the line"
                except ValueError as err:
                    problem = f"invalid JSON ({str(err).split(':')[0]})"
                if problem is None and not isinstance(rec, dict):
                    problem = f"a JSON {type(rec).__name__}, not an object"
                row_vals: list[str | None] = []
                for c in columns:
                    if problem is not None:
                        break
                    v = rec.get(c) if isinstance(rec, dict) else None
                    if v is None:
                        problem = f"column {c!r} is missing or null"
                    elif not isinstance(v, str):
                        problem = f"column {c!r} holds {_json_kind(v)}, not a string"
                    else:
                        row_vals.append(v)
                if problem is not None:
                    bad.add(where, problem)
                    problems[record - first] = problem
                    row_vals = [None] * len(columns)
                for c, v in zip(columns, row_vals):
                    values[c].append(v)
                if len(values[columns[0]]) >= BATCH_ROWS:
                    yield flush()
                    first = record + 1
                    values = {c: [] for c in columns}
                    problems = {}
    except (OSError, EOFError) as err:
        raise _unreadable(src, err) from err
    if values[columns[0]]:
        yield flush()


def _json_kind(v: object) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    return "an array" if isinstance(v, list) else "an object"


def jsonl_line_of(src: Source, record: int) -> int | None:
    """Physical line of JSON record ``record`` (1-based), for messages."""
    import gzip

    opener = gzip.open if src.path.suffix == ".gz" else open
    k = 0
    try:
        with opener(src.path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if raw.strip():
                    k += 1
                    if k == record:
                        return lineno
    except (OSError, EOFError):
        return None
    return None


def where(src: Source, row: int) -> str:
    if src.kind == JSONL:
        line = jsonl_line_of(src, row)
        return f"{src.path}: row {row}" + (f" (line {line})" if line else "")
    return f"{src.path}: row {row}"


# ---------------------------------------------------------------------- cleaning
def clean_text(text: str, max_chars: int) -> str:
    """The plain-text rule on one value: strip, drop a byte-order mark, cut to max_chars."""
    text = text.strip()
    if text.startswith("\ufeff"):
        text = text[1:].strip()
    if len(text) > max_chars:
        text = text[:max_chars].rstrip()
    return text


def clean_column(arr, *, max_chars: int, min_chars: int, column: str
                 ) -> tuple[object, np.ndarray, dict[int, str]]:
    """Clean one Arrow column: (large_string array of cleaned text, status, problems).

    Status per row: 0 kept, 2 shorter than ``min_chars``, 3 bad (null/missing, invalid UTF-8,
    a NUL character, empty after stripping). Vectorised (pyarrow.compute) except for the rare
    rows where Unicode whitespace, a byte-order mark or the ``max_chars`` cut needs Python's
    exact ``str.strip`` rule.
    """
    import pyarrow.compute as pc

    pa = _pa()
    n = len(arr)
    status = np.zeros(n, dtype=np.uint8)
    problems: dict[int, str] = {}
    null = arr.is_null().to_numpy(zero_copy_only=False)
    if not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
        try:  # a JSON or Arrow string column is not always valid UTF-8
            arr.validate(full=True)
        except pa.ArrowInvalid:
            arr = arr.cast(pa.large_binary())
    if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
        try:
            arr = arr.cast(pa.large_string())
        except pa.ArrowInvalid:
            vals = arr.to_pylist()
            fixed: list[str | None] = []
            for i, v in enumerate(vals):
                if v is None:
                    fixed.append(None)
                    continue
                try:
                    fixed.append(v.decode("utf-8"))
                except UnicodeDecodeError as err:
                    problems[i] = (f"column {column!r}: invalid UTF-8 at byte {err.start + 1} "
                                   f"of the value")
                    fixed.append(None)
            arr = pa.array(fixed, type=pa.large_string())
    elif not pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.large_string())
    for i in np.flatnonzero(null).tolist():
        problems.setdefault(i, f"column {column!r} is missing or null")
    trimmed = pc.utf8_trim(arr, characters=_ASCII_WS)
    nul = pc.fill_null(pc.match_substring(arr, "\x00"), False).to_numpy(zero_copy_only=False)
    for i in np.flatnonzero(nul).tolist():
        problems.setdefault(i, f"column {column!r}: NUL character in the text")
    chars = pc.fill_null(pc.utf8_length(trimmed), 0).to_numpy(zero_copy_only=False).copy()
    edge = pc.fill_null(pc.match_substring_regex(trimmed, r"^[^\x00-\x7f]|[^\x00-\x7f]$"),
                        False).to_numpy(zero_copy_only=False)
    slow = np.flatnonzero((edge | (chars > max_chars)) & ~null)
    if slow.size:
        vals = trimmed.to_pylist()
        for i in slow.tolist():
            if i not in problems:
                vals[i] = clean_text(vals[i], max_chars)
                chars[i] = len(vals[i])
        trimmed = pa.array(vals, type=pa.large_string())
    for i in np.flatnonzero((chars == 0) & ~null).tolist():
        problems.setdefault(i, f"column {column!r} is empty after stripping whitespace")
    status[(chars < min_chars)] = 2
    for i in problems:
        status[i] = 3
    return trimmed, status, problems

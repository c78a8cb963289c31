"""Writing mined rows: Parquet, JSON Lines or CSV / TSV by the output's extension, atomically
(a temp sibling renamed over the output at the end; removed if anything fails)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from csekit.atomic import temp_name
from csekit.errors import ConfigError

FORMATS = (".parquet", ".jsonl", ".csv", ".tsv")


def check_output(path: Path) -> None:
    if path.suffix not in FORMATS:
        raise ConfigError(f"--output {path}: the extension picks the format, one of "
                          f"{', '.join(FORMATS)}")
    if path.is_dir():
        raise ConfigError(f"--output {path} is a directory; give a file name")


def write_table(path: Path, columns: list[str], batches: Iterable[dict[str, list]]) -> int:
    """Write the column batches to ``path``; returns the number of rows. JSON Lines needs
    nothing; Parquet and CSV / TSV need pyarrow (the ``parquet`` extra)."""
    check_output(path)
    if path.suffix != ".jsonl":
        try:
            import pyarrow as pa
        except ImportError as err:
            raise ConfigError(f"--output {path}: writing {path.suffix} needs pyarrow (pip "
                              "install 'csekit[parquet]'); .jsonl needs nothing") from err
        types = {c: pa.string() if c not in ("pos_score", "neg_score") else pa.float32()
                 for c in columns}
        schema = pa.schema([(c, types[c]) for c in columns])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temp_name(path.name))
    n = 0
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            with pq.ParquetWriter(tmp, schema) as w:
                for b in batches:
                    w.write_table(pa.table({c: b[c] for c in columns}, schema=schema))
                    n += len(b[columns[0]])
                if n == 0:
                    w.write_table(schema.empty_table())
        elif path.suffix == ".jsonl":
            with open(tmp, "w", encoding="utf-8") as f:
                for b in batches:
                    for vals in zip(*(b[c] for c in columns)):
                        f.write(json.dumps(dict(zip(columns, vals)), ensure_ascii=False) + "\n")
                        n += 1
        else:
            import pyarrow.csv as pacsv

            opts = pacsv.WriteOptions(delimiter="\t" if path.suffix == ".tsv" else ",",
                                      quoting_style="all_valid")
            with pacsv.CSVWriter(tmp, schema, write_options=opts) as w:
                for b in batches:
                    w.write_table(pa.table({c: b[c] for c in columns}, schema=schema))
                    n += len(b[columns[0]])
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n


__all__ = ["FORMATS", "check_output", "write_table"]

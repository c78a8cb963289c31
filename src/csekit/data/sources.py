"""Where the training rows come from: files, folders and globs, and the format of each.

``--train-file`` takes one path, a glob (``data/*.parquet``) or several of either separated by
commas (a path that exists as written is taken literally, commas and all). Formats, by name:

======================  =========================================================
``.txt``, ``.txt.gz``,  plain text, one sentence per line (any other suffix is text too)
``.gz``
``.jsonl``, ``.json``   JSON Lines (one object per line; ``.gz`` allowed)
``.csv`` / ``.tsv``     comma / tab separated, first row is the header (``.gz`` allowed)
``.parquet``, ``.pq``   Parquet
folder                  a ``datasets`` ``save_to_disk`` folder (``dataset_info.json`` and
                        ``state.json`` inside), or a folder of files of one format
======================  =========================================================

All sources of one corpus must have the same format family (text, or tabular).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from csekit.errors import DataError

TEXT, JSONL, CSV, TSV, PARQUET, HF = "text", "jsonl", "csv", "tsv", "parquet", "hf_dataset"
TABULAR = (JSONL, CSV, TSV, PARQUET, HF)
_KNOWN = {".jsonl": JSONL, ".json": JSONL, ".ndjson": JSONL, ".csv": CSV, ".tsv": TSV,
          ".parquet": PARQUET, ".pq": PARQUET}


@dataclass(frozen=True)
class Source:
    path: Path
    kind: str

    @property
    def gzip(self) -> bool:
        return self.kind == TEXT and self.path.suffix == ".gz"

    def fingerprint(self) -> list[object]:
        """(absolute path, size, mtime_ns) of the file, or of every file of a folder."""
        if self.path.is_dir():
            files = sorted(p for p in self.path.rglob("*") if p.is_file())
        else:
            files = [self.path]
        out: list[object] = []
        for p in files:
            st = p.stat()
            out.append([str(p.absolute()), st.st_size, st.st_mtime_ns])
        return out


def kind_of(path: Path) -> str:
    if path.is_dir():
        if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
            return HF
        if (path / "dataset_dict.json").is_file():
            return HF  # reported with its splits by the reader
        raise DataError(f"{path}: a folder, but not a `datasets` save_to_disk folder; give files "
                        f"or a glob (e.g. {path}/*.parquet)")
    name = path.name.lower()
    name = name.removesuffix(".gz")
    return _KNOWN.get(Path(name).suffix, TEXT)


def _expand(spec: str) -> list[Path]:
    if os.path.exists(spec):
        return [Path(spec)]
    if glob.has_magic(spec):
        hits = sorted(glob.glob(spec, recursive=True))
        if not hits:
            raise DataError(f"{spec}: no file matches this pattern")
        return [Path(h) for h in hits]
    raise DataError(f"{spec}: training file not found")


def resolve_sources(paths: str | os.PathLike[str] | list[str | os.PathLike[str]]) -> list[Source]:
    """Expand ``paths`` (a path, a glob, comma-separated ones, or a list) into sources."""
    if isinstance(paths, (list, tuple)):
        specs = [str(p) for p in paths]
    else:
        spec = str(paths)
        specs = [spec] if os.path.exists(spec) else [s for s in spec.split(",") if s.strip()]
    if not specs:
        raise DataError("no training file given")
    found: list[Path] = []
    for spec in specs:
        found.extend(_expand(spec.strip() if not os.path.exists(spec) else spec))
    sources = [Source(p, kind_of(p)) for p in found]
    families = {"text" if s.kind == TEXT else "tabular" for s in sources}
    if len(families) > 1:
        raise DataError(f"{', '.join(str(s.path) for s in sources[:4])}: mixes plain text with "
                        "JSONL/CSV/Parquet/datasets sources; give sources of one kind")
    return sources

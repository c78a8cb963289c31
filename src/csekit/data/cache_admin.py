"""``csekit data cache``: what csekit keeps in its cache folder, and pruning it.

Only what csekit writes there is listed or removed: the corpus indexes
``<cache>/corpus-index/<key>/`` (a 32-hex-digit key and a ``meta.json``; see
:mod:`csekit.data.index_cache`), their ``<key>.lock`` files, and the temp folders of builders
that were killed (``.<key>.tmp-<host>-<pid>-<random>``). Any other file in the folder is left
alone. An index's "last used" time is the mtime of its ``meta.json``, which every use
refreshes.

Pruning removes the indexes not used for ``older_than_days`` and then, least recently used
first, until the rest fits in ``max_bytes``; a removed index is rebuilt by its next use. A
lock file is removed with its index only while its lock can be taken (no builder is using
it); a builder's temp folder only when its writer is gone (this host, process ended) or, for
another host's, when it is older than ``older_than_days``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from csekit.atomic import writer_is_gone
from csekit.data.index_cache import INDEX_DIR, cache_root
from csekit.errors import ConfigError

_KEY = re.compile(r"^[0-9a-f]{32}$")
_TEMP = re.compile(r"^\.([0-9a-f]{32})\.tmp-(.+)$")
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


@dataclass
class CacheEntry:
    """One corpus index (or a killed builder's temp folder, ``temp=True``)."""

    path: Path
    size: int
    last_used: float  # epoch seconds
    temp: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        m = _TEMP.match(self.path.name)
        return m.group(1) if m else self.path.name

    def sources(self) -> list[str]:
        """The indexed files (from the index's description; empty for older indexes)."""
        out: list[str] = []
        for item in (self.meta.get("description") or {}).get("sources", []):
            # [kind, [[absolute path, size, mtime_ns], ...]] (Source.fingerprint)
            files = item[1] if isinstance(item, list) and len(item) > 1 else []
            out += [str(f[0]) for f in files if isinstance(f, list) and f]
        return out

    def describe(self) -> dict[str, Any]:
        stats = self.meta.get("stats") or {}
        return {"key": self.key, "path": str(self.path), "bytes": self.size,
                "last_used": time.strftime("%Y-%m-%d %H:%M", time.localtime(self.last_used)),
                "days_unused": round((time.time() - self.last_used) / 86400, 1),
                "kind": "temp (interrupted build)" if self.temp else self.meta.get("kind", "?"),
                "rows": stats.get("sentences"), "sources": self.sources()}


def parse_size(text: str) -> int:
    """``20GB``, ``500M``, ``1.5GiB``, ``1000000`` -> bytes (k/M/G/T powers of 1000, KiB/MiB/
    GiB/TiB of 1024)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"not a size: {text!r} (examples: 500MB, 20GB, 1.5GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def list_cache(root: Path | None = None) -> list[CacheEntry]:
    """Every corpus index and builder temp folder under the cache, least recently used first."""
    import json

    base = (root or cache_root()) / INDEX_DIR
    if not base.is_dir():
        return []
    out: list[CacheEntry] = []
    for p in base.iterdir():
        if p.is_symlink() or not p.is_dir():
            continue
        if _KEY.match(p.name) and (p / "meta.json").is_file():
            try:
                meta = json.loads((p / "meta.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                meta = {}
            used = (p / "meta.json").stat().st_mtime
            out.append(CacheEntry(p, _tree_size(p), used, meta=meta))
        elif _TEMP.match(p.name):
            out.append(CacheEntry(p, _tree_size(p), p.stat().st_mtime, temp=True))
    return sorted(out, key=lambda e: e.last_used)


def _remove_lock(lock: Path) -> None:
    """Remove ``<key>.lock`` only while holding its lock (no builder waits on it)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.unlink(missing_ok=True)
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.ENOSYS, errno.EOPNOTSUPP,
                             errno.ENOLCK):
            raise
    finally:
        os.close(fd)


def prune_cache(*, older_than_days: float | None = None, max_bytes: int | None = None,
                dry_run: bool = False, root: Path | None = None) -> list[CacheEntry]:
    """Remove (or with ``dry_run`` only choose) the entries the rules select; returns them."""
    if older_than_days is None and max_bytes is None:
        raise ConfigError("--prune needs --older-than DAYS and/or --max-size SIZE")
    if older_than_days is not None and older_than_days < 0:
        raise ConfigError(f"--older-than must be >= 0 days, got {older_than_days}")
    now = time.time()
    entries = list_cache(root)
    chosen: list[CacheEntry] = []
    for e in entries:
        if e.temp:
            tag = _TEMP.match(e.path.name).group(2)  # type: ignore[union-attr]
            old = older_than_days is not None and now - e.last_used > older_than_days * 86400
            if writer_is_gone(tag) or old:
                chosen.append(e)
        elif older_than_days is not None and now - e.last_used > older_than_days * 86400:
            chosen.append(e)
    if max_bytes is not None:
        kept = [e for e in entries if not e.temp and e not in chosen]
        total = sum(e.size for e in kept)
        for e in kept:  # least recently used first
            if total <= max_bytes:
                break
            chosen.append(e)
            total -= e.size
    if not dry_run:
        for e in chosen:
            shutil.rmtree(e.path, ignore_errors=True)
            if not e.temp:
                _remove_lock(e.path.with_name(f"{e.key}.lock"))
    return chosen


__all__ = ["CacheEntry", "list_cache", "parse_size", "prune_cache"]

"""The on-disk cache of corpus indexes: where it lives, its key, and one builder at a time.

An index is a folder ``<cache>/corpus-index/<key>/`` (``meta.json`` plus numpy arrays and
byte files that every process memory-maps). ``<cache>`` is ``$CSEKIT_CACHE`` or
``~/.cache/csekit``. The key hashes the absolute path, size and mtime (ns) of every source
file with the options that change the index (columns, dedup, bad-line policy, min/max chars)
and the index format version: editing, replacing or touching a file gives a new key, so a
stale index is never read. Old folders stay until ``csekit data cache --prune`` removes them
(:mod:`csekit.data.cache_admin`); each use refreshes the mtime of its ``meta.json``, the "last
used" time that pruning goes by.

Concurrency: the builder holds an exclusive ``flock`` on ``<key>.lock`` and writes the folder
atomically (a temp sibling ``.<key>.tmp-<host>-<pid>-<random>``, every file fsync'ed with
:mod:`csekit.atomic`'s helpers, then one ``rename``). When 8 processes start at once, one
builds and the other 7 wait on the lock, then find the finished folder and map it. Where
``flock`` does not serialise (some network file systems, several nodes), two builders produce
identical folders and the first ``rename`` wins: the rename never replaces an existing index,
so no process ever loses files it has mapped. Where ``flock`` is not supported at all (ENOSYS,
EOPNOTSUPP, ENOLCK: Lustre without ``flock``, some NFS mounts) that is what happens, with a
warning. A killed builder's temp folder is removed by the next build on the same host only:
another host's builder is never judged by its process id.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from csekit.atomic import fsync_dir, fsync_tree, remove_stale_temps, temp_name
from csekit.errors import DataError

logger = logging.getLogger(__name__)

INDEX_VERSION = 1
CACHE_ENV = "CSEKIT_CACHE"
INDEX_DIR = "corpus-index"
# flock errors of a file system without (working) locks: build without the lock
NO_LOCKS = frozenset({errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOLCK})


def cache_root() -> Path:
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "csekit"


def index_key(description: dict[str, Any]) -> str:
    blob = json.dumps({"version": INDEX_VERSION, **description}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def _meta(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive ``flock`` on ``path`` for the block; without one where the file system
    has no locks (a warning: builders that start together may each build, the first rename
    wins)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("waiting for another process to finish the corpus index (%s)", path)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:
            if err.errno not in NO_LOCKS:
                raise
            logger.warning("file locks are not supported under %s (%s): building the corpus "
                           "index without one; processes that start together may each build "
                           "it, the first to finish is used (set %s to a local folder to "
                           "avoid the duplicate work)", path.parent,
                           os.strerror(err.errno or 0), CACHE_ENV)
        yield
    finally:
        os.close(fd)  # releases the lock


def touch_used(folder: Path) -> None:
    """Record a use of the index (the mtime of its meta.json; read-only caches are fine)."""
    try:
        os.utime(folder / "meta.json")
    except OSError:
        pass


def get_or_build(description: dict[str, Any],
                 build: Callable[[Path], dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    """The index folder for ``description`` and its meta, building it once if needed.

    ``build(tmp_folder)`` writes the arrays into ``tmp_folder`` and returns the meta dict.
    """
    key = index_key(description)
    base = cache_root() / INDEX_DIR
    folder = base / key
    meta = _meta(folder)
    if meta is not None:
        touch_used(folder)
        return folder, meta
    try:
        base.mkdir(parents=True, exist_ok=True)
        lock = base / f"{key}.lock"
        with _locked(lock):
            meta = _meta(folder)  # another process may have built it while we waited
            if meta is not None:
                touch_used(folder)
                return folder, meta
            start = time.perf_counter()
            meta = _build_atomically(folder, build, description)
            logger.info("corpus index built in %.1fs: %s", time.perf_counter() - start, folder)
    except PermissionError as err:
        raise DataError(f"cannot write the corpus index under {base} ({err.strerror}); set "
                        f"{CACHE_ENV} to a writable folder") from err
    return folder, meta


def _build_atomically(folder: Path, build: Callable[[Path], dict[str, Any]],
                      description: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build into a temp sibling and rename it to ``folder`` unless another builder won."""
    remove_stale_temps(folder.parent, folder.name)  # (this host's killed builders only)
    tmp = folder.with_name(temp_name(folder.name))
    tmp.mkdir()
    try:
        start = time.perf_counter()
        meta = build(tmp)
        meta["build_seconds"] = round(time.perf_counter() - start, 3)
        if description is not None:
            meta["description"] = description  # (what csekit data cache lists)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        fsync_tree(tmp)
        try:
            os.rename(tmp, folder)
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another builder finished first
            theirs = _meta(folder)
            if theirs is None:
                raise
            return theirs
        fsync_dir(folder.parent)
        return meta
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["CACHE_ENV", "INDEX_DIR", "INDEX_VERSION", "cache_root", "get_or_build", "index_key",
           "touch_used"]

"""Atomic writes: whole directories (models, checkpoints) and small text files.

The new content is written into a temporary sibling directory, every file is fsync'ed, and the
directory is then swapped into place. On Linux the swap is ``renameat2(RENAME_EXCHANGE)``, a
single atomic step: at every instant ``path`` is either the complete old folder or the complete
new one. Elsewhere, the old folder is first renamed aside and then the new one renamed in (a
crash between the two renames leaves the old folder intact at ``.<name>.old-*``).

Temporary folders are named ``.<name>.tmp-<pid>-<random>``; those of a writer that was killed
(its pid is gone) are removed by the next save into the same parent folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

# Test hook: "SECONDS" or "SECONDS@STEP": sleep in the middle of a checkpoint save (after the
# model and optimiser files are written; only for the checkpoint of STEP when given), so that a
# test can SIGKILL the process mid-save. Never set it in real runs.
PAUSE_ENV = "CSEKIT_TEST_PAUSE_MID_SAVE"

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (and ``root`` itself)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    """fsync a directory entry list (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths with renameat2; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def replace_dir(src: Path, dst: Path) -> None:
    """Move the complete directory ``src`` to ``dst``, replacing ``dst`` if it exists."""
    if not dst.exists():
        os.replace(src, dst)
    elif _exchange(src, dst):
        shutil.rmtree(src, ignore_errors=True)  # src now holds the old content
    else:
        old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(dst.parent)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(parent: Path, name: str | None = None) -> None:
    """Delete ``.<name>.tmp-<pid>-*`` folders under ``parent`` left by a killed writer (its pid
    is gone); every name when ``name`` is None."""
    if not parent.is_dir():
        return
    for tmp in parent.glob(f".{name if name is not None else '*'}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-", 1)[0])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            logger.info("removing %s left by an interrupted save", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def maybe_pause_mid_save(step: int | None = None) -> None:
    """The mid-save pause of :data:`PAUSE_ENV` (tests only)."""
    value = os.environ.get(PAUSE_ENV)
    if not value:
        return
    seconds, _, at = value.partition("@")
    if not at or (step is not None and int(at) == step):
        logger.warning("%s set: pausing %s s in the middle of a save", PAUSE_ENV, seconds)
        time.sleep(float(seconds))


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small text file atomically (temp file + fsync + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory; on success it atomically becomes ``path``.

    On an exception the temporary directory is removed and ``path`` is left untouched.
    """
    dst = Path(path).absolute()
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and not dst.is_dir():
        from csekit.errors import ConfigError

        raise ConfigError(f"cannot save to {dst}: it exists and is not a directory")
    remove_stale_temps(dst.parent, dst.name)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        replace_dir(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

"""Atomic writes: whole directories (models, checkpoints) and small text files.

The new content is written into a temporary sibling directory, every file is fsync'ed, and the
directory is then swapped into place. On Linux the swap is ``renameat2(RENAME_EXCHANGE)``, a
single atomic step: at every instant ``path`` is either the complete old folder or the complete
new one. Elsewhere, the old folder is first renamed aside and then the new one renamed in (a
crash between the two renames leaves the old folder intact at ``.<name>.old-*``).

Temporary folders are named ``.<name>.tmp-<host>-<pid>-<random>``; those of a writer on this
host that was killed (its pid is gone) are removed by the next save into the same parent
folder. A writer on another host (a shared output or cache folder on NFS) is never judged by
its pid: its temp is left alone. (Names from before the host was added, ``.<name>.tmp-<pid>-
<random>``, are left alone too.)

:func:`merge_dir` commits a complete staging folder into a folder that holds other files too
(a run's output folder, a user's folder): the model's entries are moved in one by one, the
entries of the previous save that the new one lacks are removed, and nothing else is touched.
The staging folder's manifest is the journal: a commit interrupted by a kill is finished by
running it again.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
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


def host_name() -> str:
    """This machine's name as it appears in a writer's temp name (no ``/``, no spaces)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"


def writer_tag() -> str:
    """``<host>-<pid>``: who writes a temp file or folder."""
    return f"{host_name()}-{os.getpid()}"


def temp_name(name: str) -> str:
    """``.<name>.tmp-<host>-<pid>-<random>``: a writer's private temp sibling of ``name``."""
    return f".{name}.tmp-{writer_tag()}-{uuid.uuid4().hex[:8]}"


def parse_writer(tag: str) -> tuple[str, int] | None:
    """(host, pid) of ``<host>-<pid>-<random>``; None for another form (an older name)."""
    parts = tag.rsplit("-", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def writer_is_gone(tag: str) -> bool:
    """True only for a writer of THIS host whose process has ended (a killed writer); another
    host's writer, or a tag without a host, is never judged by its pid."""
    who = parse_writer(tag)
    if who is None or who[0] != host_name():
        return False
    return who[1] != os.getpid() and not _pid_alive(who[1])


def remove_stale_temps(parent: Path, name: str | None = None) -> None:
    """Delete ``.<name>.tmp-<host>-<pid>-*`` folders under ``parent`` left by a killed writer
    of this host (:func:`writer_is_gone`); every name when ``name`` is None."""
    if not parent.is_dir():
        return
    for tmp in parent.glob(f".{name if name is not None else '*'}.tmp-*"):
        if writer_is_gone(tmp.name.rsplit(".tmp-", 1)[1]):
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
    tmp = path.with_name(temp_name(path.name))
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
    tmp = dst.with_name(temp_name(dst.name))
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        replace_dir(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(folder: Path, manifest: str) -> list[str] | None:
    """The entry names listed in ``folder/manifest`` (a JSON list); None when absent or bad."""
    try:
        names = json.loads((Path(folder) / manifest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return [n for n in names if n and "/" not in n and n not in (".", "..", manifest)]


def write_manifest(folder: Path, manifest: str) -> list[str]:
    """List every entry of ``folder`` (except the manifest) in ``folder/manifest``."""
    names = sorted(p.name for p in Path(folder).iterdir() if p.name != manifest)
    (Path(folder) / manifest).write_text(json.dumps(names) + "\n", encoding="utf-8")
    return names


def _remove(path: Path) -> None:
    """Remove a file, a symlink (never its target) or a folder."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def merge_dir(staging: Path, root: Path, *, manifest: str, owned: Iterable[str] = ()) -> list[str]:
    """Move the complete folder ``staging`` (a child of ``root``) into ``root``, entry by entry.

    ``staging/manifest`` lists its entries (the journal); ``root/manifest`` lists those of the
    previous commit, which are removed when the new one lacks them (``owned``: the names to
    treat so when ``root`` has no manifest). Every other entry of ``root`` stays as it is.
    Run again after a kill, it finishes the commit: entries already moved are in the new list,
    so they are not removed, and the root manifest is replaced only at the end. Returns the
    committed names.
    """
    staging, root = Path(staging), Path(root)
    new = read_manifest(staging, manifest)
    if new is None:  # a staging folder written without a journal: its entries
        new = sorted(p.name for p in staging.iterdir() if p.name != manifest)
        (staging / manifest).parent.mkdir(parents=True, exist_ok=True)
        (staging / manifest).write_text(json.dumps(new) + "\n", encoding="utf-8")
    old = read_manifest(root, manifest)
    if old is None:
        old = [n for n in owned if (root / n).exists() or (root / n).is_symlink()]
    for name in new:
        src, dst, aside = staging / name, root / name, root / f".old-{name}"
        if src.exists() or src.is_symlink():  # (else moved before an interruption)
            exists = dst.exists() or dst.is_symlink()
            if exists and ((dst.is_dir() and not dst.is_symlink()) or src.is_dir()):
                _remove(aside)
                os.replace(dst, aside)  # a folder cannot be replaced by a rename
            os.replace(src, dst)
        if aside.exists() or aside.is_symlink():
            _remove(aside)
    for name in sorted(set(old) - set(new)):
        _remove(root / name)
    fsync_dir(root)
    os.replace(staging / manifest, root / manifest)  # the commit point of the new list
    shutil.rmtree(staging, ignore_errors=True)
    fsync_dir(root)
    return new

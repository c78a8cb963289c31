"""Atomic directory writes: build in a temporary sibling, fsync, then one ``rename``.

A reader (or a resumed run) therefore sees either the old directory or the complete new one,
never a half-written one, whatever moment a SIGKILL or power loss strikes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
# Test hook: "SECONDS" or "SECONDS@STEP": sleep in the middle of a checkpoint save (after the
# model and optimiser files are written; only for the checkpoint of STEP when given), so that a
# test can SIGKILL the process mid-save. Never set it in real runs.
PAUSE_ENV = "CSEKIT_TEST_PAUSE_MID_SAVE"


def fsync_dir(path: Path) -> None:
    """fsync a directory entry (POSIX); a no-op where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(str(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb+") as fh:
                os.fsync(fh.fileno())
    for p in sorted([path, *[d for d in path.rglob("*") if d.is_dir()]]):
        fsync_dir(p)


def maybe_pause_mid_save(step: int | None = None) -> None:
    value = os.environ.get(PAUSE_ENV)
    if not value:
        return
    seconds, _, at = value.partition("@")
    if not at or (step is not None and int(at) == step):
        logger.warning("%s set: pausing %s s in the middle of a save", PAUSE_ENV, seconds)
        time.sleep(float(seconds))


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it atomically becomes ``final``.

    An existing ``final`` is replaced: it is first renamed aside, the new one renamed in, then
    the old one deleted, so at every instant one complete version exists on disk. On an
    exception the temporary directory is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        old = None
        if final.exists():
            old = final.parent / f"{TMP_PREFIX}old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_stale_tmp(parent: Path) -> None:
    """Remove temporary directories left behind by a killed save."""
    if not parent.is_dir():
        return
    for p in parent.iterdir():
        if p.name.startswith(TMP_PREFIX) and p.is_dir():
            logger.info("removing %s left by an interrupted save", p)
            shutil.rmtree(p, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small text file atomically (temp file + fsync + rename)."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)

"""``csekit data download``: SentEval STS/SICK files, SimCSE's wiki1m corpus and NLI triplets.

Sources (the locations SimCSE's own scripts use, ``SentEval/data/downstream/download_dataset.sh``
and ``data/download_wiki.sh``)::

    {base}/senteval.tar            SentEval's data as SimCSE packs it
    {base}/wiki1m_for_simcse.txt   10^6 English Wikipedia sentences, one per line
    {base}/nli_for_simcse.csv      SNLI + MNLI triplets sent0,sent1,hard_neg (data/download_nli.sh)
    base = https://huggingface.co/datasets/princeton-nlp/datasets-for-simcse/resolve/main

``base`` can be replaced with ``--base-url`` or ``$CSEKIT_DOWNLOAD_BASE_URL`` (a mirror, or a
local server in tests).

Layout written under ``dest`` (``--dest``, default ``$CSEKIT_DATA`` or ``./data``), which is
then a valid ``--data-dir`` for ``csekit eval``::

    dest/downstream/STS/STS12-en-test/...  STS12-16, STSBenchmark
    dest/downstream/SICK/...
    dest/wiki1m_for_simcse.txt
    dest/nli_for_simcse.csv        (only with --nli / --what nli)

What is verified:

* ``senteval.tar``: no checksum of the archive is published, so the SHA-256 the server
  advertises is used when there is one (the Hugging Face hub gives the Git LFS SHA-256 in
  ``X-Linked-Etag``). Only the ``STS/`` and ``SICK/`` members are extracted (regular files,
  no absolute or ``..`` paths), and each of the 54 data files the evaluation reads is checked
  against the SHA-256 pinned in :mod:`csekit.data.senteval_manifest` before anything is moved
  into place. A mismatch removes the archive and fails.
* ``wiki1m_for_simcse.txt``: no checksum is published; the server-advertised SHA-256 is checked
  when present, the transfer length always, and the line count is compared with the published
  10^6 (a warning, not an error, if it differs).
* ``nli_for_simcse.csv``: no checksum is published either; the server-advertised SHA-256 and
  the transfer length are checked, and the header must be ``sent0,sent1,hard_neg`` (anything
  else, e.g. an HTML error page, removes the file and fails).

Downloads resume from ``.part`` files (HTTP Range) and are renamed into place atomically.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

from csekit.data.fetch import DownloadError, fetch, sha256_file
from csekit.data.senteval_manifest import SENTEVAL_SHA256
from csekit.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://huggingface.co/datasets/princeton-nlp/datasets-for-simcse/resolve/main"
BASE_URL_ENV = "CSEKIT_DOWNLOAD_BASE_URL"
SENTEVAL_ARCHIVE = "senteval.tar"
WIKI1M_FILE = "wiki1m_for_simcse.txt"
WIKI1M_LINES = 1_000_000
NLI_FILE = "nli_for_simcse.csv"
NLI_HEADER = "sent0,sent1,hard_neg"
DEFAULT_ITEMS = ("senteval", "wiki1m")  # what `csekit data download` fetches without --what
ITEMS = (*DEFAULT_ITEMS, "nli")
_TOP_DIRS = ("STS", "SICK")


def default_dest() -> Path:
    return Path(os.environ.get("CSEKIT_DATA") or "data")


def resolve_base_url(base_url: str | None = None) -> str:
    return (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def parse_items(what: str | Iterable[str]) -> list[str]:
    names = [w.strip() for w in (what.split(",") if isinstance(what, str) else what) if w.strip()]
    unknown = sorted(set(names) - set(ITEMS))
    if unknown or not names:
        raise ConfigError(f"--what: unknown item(s) {', '.join(unknown) or '(none)'}; "
                          f"choose from {','.join(ITEMS)}")
    return [n for n in ITEMS if n in names]


def download(dest: str | os.PathLike[str] | None = None,
             what: str | Iterable[str] = DEFAULT_ITEMS, *,
             base_url: str | None = None, keep_archive: bool = False,
             timeout: float = 60.0) -> dict[str, Path]:
    """Download and verify the requested items; returns {item: path}."""
    dest_path = Path(dest) if dest is not None else default_dest()
    base = resolve_base_url(base_url)
    out: dict[str, Path] = {}
    for item in parse_items(what):
        if item == "senteval":
            out[item] = download_senteval(dest_path, base_url=base, keep_archive=keep_archive,
                                          timeout=timeout)
        elif item == "nli":
            out[item] = download_nli(dest_path, base_url=base, timeout=timeout)
        else:
            out[item] = download_wiki1m(dest_path, base_url=base, timeout=timeout)
    return out


# ------------------------------------------------------------------------------ SentEval
def _verified(downstream: Path, manifest: Mapping[str, str]) -> list[str]:
    """Manifest entries missing or differing under ``downstream``."""
    bad = []
    for rel, digest in sorted(manifest.items()):
        path = downstream / rel
        if not path.is_file() or sha256_file(path) != digest:
            bad.append(rel)
    return bad


def download_senteval(dest: Path, *, base_url: str | None = None, keep_archive: bool = False,
                      manifest: Mapping[str, str] = SENTEVAL_SHA256, timeout: float = 60.0) -> Path:
    """Fetch ``senteval.tar``, extract STS/SICK into ``dest/downstream``, verify. Returns that folder."""
    downstream = Path(dest) / "downstream"
    if not _verified(downstream, manifest):
        logger.info("%s: SentEval STS/SICK files already present and verified", downstream)
        return downstream
    archive = Path(dest) / SENTEVAL_ARCHIVE
    url = f"{resolve_base_url(base_url)}/{SENTEVAL_ARCHIVE}"
    if not archive.is_file():
        fetch(url, archive, timeout=timeout)
    try:
        extract_senteval(archive, downstream, manifest)
    except DownloadError:
        archive.unlink(missing_ok=True)
        raise
    if not keep_archive:
        archive.unlink()
    return downstream


def _member_path(name: str) -> PurePosixPath | None:
    """Path of an archive member below STS/ or SICK/, or None (anything else is ignored)."""
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts:
        return None
    parts = [x for x in p.parts if x not in ("", ".")]
    for i, part in enumerate(parts):
        if part in _TOP_DIRS and i < len(parts) - 1:
            return PurePosixPath(*parts[i:])
    return None


def extract_senteval(archive: Path, downstream: Path, manifest: Mapping[str, str]) -> list[str]:
    """Extract the STS/SICK members of ``archive`` into ``downstream`` after verifying them."""
    staging = downstream.parent / ".senteval-staging"
    shutil.rmtree(staging, ignore_errors=True)
    extracted: list[str] = []
    try:
        try:
            with tarfile.open(archive, "r:*") as tf:
                for member in tf:
                    rel = _member_path(member.name)
                    if rel is None or not member.isfile():
                        continue
                    out = staging / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(member)
                    assert src is not None  # regular file
                    with src, open(out, "wb") as f:
                        shutil.copyfileobj(src, f, 1 << 20)
                    extracted.append(str(rel))
        except (tarfile.TarError, EOFError, OSError) as err:
            raise DownloadError(f"{archive}: not a readable tar archive ({err}); "
                                "it was removed, run again") from err
        bad = _verified(staging, manifest)
        if bad:
            missing = [rel for rel in bad if not (staging / rel).is_file()]
            differ = [rel for rel in bad if rel not in missing]
            head = (f"checksum mismatch in {archive.name}: {differ[0]}" if differ
                    else f"missing from {archive.name}: {missing[0]}")
            raise DownloadError(f"{head} ({len(differ)} differ, {len(missing)} missing of "
                                f"{len(manifest)} pinned files); the archive was removed, run again")
        for rel in extracted:
            final = downstream / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("%s: %d files extracted, %d verified by SHA-256", downstream, len(extracted),
                len(manifest))
    return extracted


# ------------------------------------------------------------------------------ wiki1m
def download_wiki1m(dest: Path, *, base_url: str | None = None, sha256: str | None = None,
                    expected_lines: int | None = WIKI1M_LINES, timeout: float = 60.0) -> Path:
    """Fetch ``wiki1m_for_simcse.txt`` into ``dest``. Returns its path."""
    target = Path(dest) / WIKI1M_FILE
    if target.is_file() and (sha256 is None or sha256_file(target) == sha256):
        logger.info("%s: already present", target)
        return target
    fetch(f"{resolve_base_url(base_url)}/{WIKI1M_FILE}", target, sha256=sha256, timeout=timeout)
    if expected_lines is not None:
        with open(target, "rb") as f:
            lines = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
        if lines != expected_lines:
            logger.warning("%s: %d lines, the published corpus has %d", target, lines,
                           expected_lines)
    return target


# ------------------------------------------------------------------------------ NLI triplets
def download_nli(dest: Path, *, base_url: str | None = None, sha256: str | None = None,
                 timeout: float = 60.0) -> Path:
    """Fetch ``nli_for_simcse.csv`` (supervised SimCSE's triplets) into ``dest``; its path."""
    target = Path(dest) / NLI_FILE
    if target.is_file() and _nli_header_ok(target) and (sha256 is None
                                                         or sha256_file(target) == sha256):
        logger.info("%s: already present", target)
        return target
    fetch(f"{resolve_base_url(base_url)}/{NLI_FILE}", target, sha256=sha256, timeout=timeout)
    if not _nli_header_ok(target):
        target.unlink()
        raise DownloadError(f"{NLI_FILE}: the download does not start with the header "
                            f"{NLI_HEADER!r}; it was removed (a wrong URL or an error page?)")
    with open(target, "rb") as f:
        lines = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    logger.info("%s: %d lines (header included; fields may hold quoted newlines)", target, lines)
    return target


def _nli_header_ok(path: Path) -> bool:
    with open(path, "rb") as f:
        first = f.readline(4096)
    return first.decode("utf-8-sig", errors="replace").strip() == NLI_HEADER

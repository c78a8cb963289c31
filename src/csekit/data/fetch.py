"""Resumable, verified, atomic HTTP(S) download of one file (standard library only).

``fetch(url, target)`` writes to ``target + ".part"``; if a ``.part`` is already there it asks
the server for the rest with an HTTP ``Range`` request and appends (a server that ignores the
range gets a fresh start). When the transfer is complete the file's SHA-256 is checked against
the expected digest, and only then is the ``.part`` renamed onto ``target`` (``os.replace``,
atomic on POSIX), so ``target`` is either absent or complete and verified.

Expected digest: the caller's, else the one the server advertises. The Hugging Face hub
answers a ``resolve`` URL of a Git LFS file with a redirect whose ``X-Linked-Etag`` header is
the file's SHA-256 (64 hex digits); :func:`server_sha256` reads it with a HEAD request that
does not follow the redirect. A plain ``ETag`` of 64 hex digits is taken the same way.

Why this is written here rather than taken from a library: ``huggingface_hub``'s
``hf_hub_download`` fetches files of hub *repositories* only, while csekit also downloads from
any URL prefix (``--base-url`` mirrors, a local server in the tests); its generic ``http_get``
is internal API. ``urllib.request.urlretrieve`` has no resume, no checksum and no atomic
rename. What is left is about 150 lines: a ``Range`` request, a SHA-256 over the bytes, and an
``os.replace``.

Every failure is a one-line :class:`DownloadError`: unreachable host (offline), HTTP error,
interrupted transfer (the ``.part`` is kept; run again to resume), checksum mismatch (the
``.part`` is removed, since resuming from corrupt bytes cannot succeed).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from csekit.atomic import fsync_dir
from csekit.errors import DataError

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(DataError):
    """A download that failed: offline, HTTP error, interrupted, or checksum mismatch."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _user_agent() -> str:
    from csekit import __version__

    return f"csekit/{__version__} (+python-urllib)"


def _unreachable(url: str, err: BaseException) -> DownloadError:
    host = urlsplit(url).netloc or url
    reason = getattr(err, "reason", None) or err
    return DownloadError(f"cannot reach {host} ({reason}); check the internet connection, or "
                         "point --base-url / CSEKIT_DOWNLOAD_BASE_URL at a reachable mirror")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None  # surface the 3xx response itself (its headers carry the LFS digest)


def server_sha256(url: str, *, timeout: float = 60.0) -> str | None:
    """SHA-256 the server advertises for ``url`` (``X-Linked-Etag`` / ``ETag``), if any.

    Raises DownloadError when the host cannot be reached; returns None when the server answers
    but advertises no SHA-256 (or refuses HEAD).
    """
    opener = urllib.request.build_opener(_NoRedirect)
    req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": _user_agent()})
    try:
        with opener.open(req, timeout=timeout) as resp:
            headers = resp.headers
    except urllib.error.HTTPError as err:
        if err.code >= 400 and err.code not in (403, 405, 501):
            raise DownloadError(f"{url}: HTTP {err.code} {err.reason}; "
                                "check the URL or try again later") from err
        headers = err.headers
    except (urllib.error.URLError, OSError) as err:
        raise _unreachable(url, err) from err
    for name in ("X-Linked-Etag", "ETag"):
        value = (headers.get(name) or "").strip().strip('"').removeprefix("W/").strip('"').lower()
        if _HEX64.match(value):
            return value
    return None


def _open_range(url: str, start: int, timeout: float) -> http.client.HTTPResponse | None:
    """GET ``url`` from byte ``start``. None means the server says nothing is left (416)."""
    headers = {"User-Agent": _user_agent()}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:
            return None
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}; "
                            "check the URL or try again later") from err
    except (urllib.error.URLError, OSError) as err:
        raise _unreachable(url, err) from err


def _progress(total: int | None, initial: int, name: str):  # type: ignore[no-untyped-def]
    from tqdm.auto import tqdm

    quiet = bool(os.environ.get("CI")) or not sys.stderr.isatty() or \
        logging.getLogger("csekit").getEffectiveLevel() > logging.INFO
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=name, disable=quiet, leave=False)


def fetch(url: str, target: str | os.PathLike[str], *, sha256: str | None = None,
          use_server_sha256: bool = True, timeout: float = 60.0) -> str:
    """Download ``url`` to ``target`` (resumable, verified, atomic). Returns the file's SHA-256.

    ``sha256``: the expected digest; when None and ``use_server_sha256``, the digest the server
    advertises is used; when neither exists only the transfer length is checked (logged).
    """
    target = Path(target)
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    expected = sha256.lower() if sha256 else None
    if expected is None and use_server_sha256:
        expected = server_sha256(url, timeout=timeout)
    if expected is None:
        logger.warning("%s: no published checksum; only the transfer length is verified", url)
    have = part.stat().st_size if part.exists() else 0
    resp = _open_range(url, have, timeout)
    if resp is not None:
        with resp:
            mode = "ab"
            if have and resp.status != 206:
                logger.info("%s: the server does not resume; downloading from the start", url)
                have, mode = 0, "wb"
            elif have:
                content_range = resp.headers.get("Content-Range", "")
                if not content_range.startswith(f"bytes {have}-"):
                    raise DownloadError(f"{url}: the server answered the resume request with "
                                        f"range {content_range!r}; delete {part} and run again")
                logger.info("%s: resuming at byte %d", url, have)
            else:
                mode = "wb"
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            _copy(resp, part, mode, have, total, url)
    size = part.stat().st_size if part.exists() else 0
    if resp is None and size == 0:
        raise DownloadError(f"{url}: the server sent no data; try again later")
    digest = sha256_file(part)
    if expected is not None and digest != expected:
        part.unlink()
        raise DownloadError(f"checksum mismatch for {url}: expected sha256 {expected}, got "
                            f"{digest} ({size} bytes); the partial file was removed, run again")
    os.replace(part, target)
    fsync_dir(target.parent)
    logger.info("%s -> %s (%d bytes, sha256 %s)", url, target, size, digest)
    return digest


def _copy(resp: http.client.HTTPResponse, part: Path, mode: str, have: int, total: int | None,
          url: str) -> None:
    written = have
    bar = _progress(total, have, part.name.removesuffix(".part"))
    try:
        with open(part, mode) as f:
            while True:
                try:
                    block = resp.read(CHUNK)
                except (TimeoutError, http.client.IncompleteRead, OSError) as err:
                    f.flush()
                    os.fsync(f.fileno())
                    raise DownloadError(f"download of {url} interrupted after {written} bytes "
                                        f"({type(err).__name__}); run again to resume") from err
                if not block:
                    break
                f.write(block)
                written += len(block)
                bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
    finally:
        bar.close()
    if total is not None and written != total:
        raise DownloadError(f"download of {url} interrupted after {written} of {total} bytes; "
                            "run again to resume")

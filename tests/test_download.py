"""`csekit data download` against a local HTTP server on 127.0.0.1 (never any other address).

The server serves a tiny fake senteval.tar and wiki1m file, honours ``Range`` requests, can
advertise a SHA-256 in ``X-Linked-Etag`` (as the Hugging Face hub does for LFS files) and can
cut a transfer short to simulate a dropped connection.
"""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from csekit.data.download import (
    _member_path,
    download,
    download_senteval,
    download_wiki1m,
    parse_items,
)
from csekit.data.fetch import DownloadError, fetch
from csekit.errors import ConfigError, CsekitError

SENTEVAL_FILES = {
    "STS/STS12-en-test/STS.input.MSRpar.txt": b"a cat sits\ta cat sat\n",
    "STS/STS12-en-test/STS.gs.MSRpar.txt": b"4.5\n",
    "STS/STSBenchmark/sts-dev.csv": b"main-captions\tMSRvid\t2012test\t0001\t5.000\tA\tB\n",
    "SICK/SICK_trial.txt": b"pair_ID\tsentence_A\tsentence_B\trelatedness_score\n",
}
UNPINNED = {"STS/STS12-en-test/00-readme.txt": b"readme\n"}
IGNORED = {"MR/rt-polarity.pos": b"not extracted\n", "../evil.txt": b"escape\n"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_tar(files: dict[str, bytes], prefix: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


MANIFEST = {k: sha(v) for k, v in SENTEVAL_FILES.items()}
TAR = make_tar({**SENTEVAL_FILES, **UNPINNED, **IGNORED}, prefix="./")
WIKI = b"".join(f"Sentence number {i} of the fake corpus.\n".encode() for i in range(5000))


class Server:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {"/senteval.tar": TAR, "/wiki1m_for_simcse.txt": WIKI}
        self.etags: dict[str, str] = {}
        self.cut_after: dict[str, int] = {}  # path -> send only this many bytes, then hang up
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _head(self) -> tuple[bytes, int] | None:
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return None
                start = 0
                rng = self.headers.get("Range")
                if self.command == "GET":
                    server.ranges.append(rng)
                if rng:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return None
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                if self.path in server.etags:
                    self.send_header("X-Linked-Etag", f'"{server.etags[self.path]}"')
                self.end_headers()
                return data, start

            def do_HEAD(self) -> None:
                self._head()

            def do_GET(self) -> None:
                got = self._head()
                if got is None:
                    return
                data, start = got
                body = data[start:]
                if self.path in server.cut_after:
                    body = body[: server.cut_after.pop(self.path)]
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def dead_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there any more: connection refused
    return f"http://127.0.0.1:{port}"


# ------------------------------------------------------------------------------ full downloads
def test_full_download(server: Server, tmp_path: Path) -> None:
    server.etags["/wiki1m_for_simcse.txt"] = sha(WIKI)
    down = download_senteval(tmp_path, base_url=server.url, manifest=MANIFEST)
    assert down == tmp_path / "downstream"
    for rel, data in {**SENTEVAL_FILES, **UNPINNED}.items():
        assert (down / rel).read_bytes() == data
    assert not (down / "MR").exists() and not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "senteval.tar").exists()  # removed after extraction by default
    wiki = download_wiki1m(tmp_path, base_url=server.url, expected_lines=5000)
    assert wiki.read_bytes() == WIKI
    assert not list(tmp_path.rglob("*.part")) and not (tmp_path / ".senteval-staging").exists()
    n_get = len(server.ranges)
    download_senteval(tmp_path, base_url=server.url, manifest=MANIFEST)  # verified: no refetch
    download_wiki1m(tmp_path, base_url=server.url)
    assert len(server.ranges) == n_get


def test_base_url_from_env(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSEKIT_DOWNLOAD_BASE_URL", server.url)
    out = download(tmp_path, "wiki1m")
    assert out == {"wiki1m": tmp_path / "wiki1m_for_simcse.txt"}
    assert out["wiki1m"].read_bytes() == WIKI


def test_tar_without_prefix_and_keep_archive(server: Server, tmp_path: Path) -> None:
    server.files["/senteval.tar"] = make_tar(SENTEVAL_FILES, prefix="downstream/")
    download_senteval(tmp_path, base_url=server.url, manifest=MANIFEST, keep_archive=True)
    assert (tmp_path / "downstream/STS/STSBenchmark/sts-dev.csv").is_file()
    assert (tmp_path / "senteval.tar").is_file()


def test_member_paths_are_confined() -> None:
    assert str(_member_path("./STS/a/b.txt")) == "STS/a/b.txt"
    assert str(_member_path("downstream/SICK/x.txt")) == "SICK/x.txt"
    assert _member_path("/STS/a.txt") is None
    assert _member_path("STS/../../etc/passwd") is None
    assert _member_path("MR/x.txt") is None and _member_path("STS") is None


# ------------------------------------------------------------------------------ resume
def test_resume_from_truncated_part(server: Server, tmp_path: Path) -> None:
    server.etags["/wiki1m_for_simcse.txt"] = sha(WIKI)
    (tmp_path / "wiki1m_for_simcse.txt.part").write_bytes(WIKI[:12345])
    out = download_wiki1m(tmp_path, base_url=server.url, expected_lines=5000)
    assert out.read_bytes() == WIKI
    assert server.ranges == ["bytes=12345-"]


def test_resume_after_dropped_connection(server: Server, tmp_path: Path) -> None:
    server.cut_after["/wiki1m_for_simcse.txt"] = 30_000
    with pytest.raises(DownloadError, match="interrupted after 30000 of .*run again to resume"):
        download_wiki1m(tmp_path, base_url=server.url, sha256=sha(WIKI))
    part = tmp_path / "wiki1m_for_simcse.txt.part"
    assert part.stat().st_size == 30_000 and not (tmp_path / "wiki1m_for_simcse.txt").exists()
    out = download_wiki1m(tmp_path, base_url=server.url, sha256=sha(WIKI))
    assert out.read_bytes() == WIKI and server.ranges == [None, "bytes=30000-"]


def test_complete_part_answered_416(server: Server, tmp_path: Path) -> None:
    (tmp_path / "w.txt.part").write_bytes(WIKI)
    fetch(f"{server.url}/wiki1m_for_simcse.txt", tmp_path / "w.txt", sha256=sha(WIKI))
    assert (tmp_path / "w.txt").read_bytes() == WIKI


# ------------------------------------------------------------------------------ failures
def test_checksum_mismatch_server_digest(server: Server, tmp_path: Path) -> None:
    server.etags["/wiki1m_for_simcse.txt"] = sha(b"something else")
    with pytest.raises(DownloadError, match="checksum mismatch for .*wiki1m_for_simcse.txt") as err:
        download_wiki1m(tmp_path, base_url=server.url)
    assert "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())  # neither the target nor a .part is left behind


def test_checksum_mismatch_corrupt_part(server: Server, tmp_path: Path) -> None:
    (tmp_path / "wiki1m_for_simcse.txt.part").write_bytes(b"X" * 100)  # not a prefix of WIKI
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_wiki1m(tmp_path, base_url=server.url, sha256=sha(WIKI))
    assert not (tmp_path / "wiki1m_for_simcse.txt.part").exists()
    assert download_wiki1m(tmp_path, base_url=server.url, sha256=sha(WIKI)).read_bytes() == WIKI


def test_extracted_file_mismatch(server: Server, tmp_path: Path) -> None:
    manifest = dict(MANIFEST, **{"SICK/SICK_trial.txt": sha(b"the real file")})
    with pytest.raises(DownloadError, match=r"checksum mismatch in senteval.tar: SICK/SICK_trial"):
        download_senteval(tmp_path, base_url=server.url, manifest=manifest)
    assert not (tmp_path / "downstream").exists() and not (tmp_path / "senteval.tar").exists()


def test_member_missing_from_archive(server: Server, tmp_path: Path) -> None:
    manifest = dict(MANIFEST, **{"STS/STS16-en-test/STS.gs.headlines.txt": sha(b"x")})
    with pytest.raises(DownloadError, match="missing from senteval.tar: STS/STS16"):
        download_senteval(tmp_path, base_url=server.url, manifest=manifest)


def test_not_a_tar(server: Server, tmp_path: Path) -> None:
    server.files["/senteval.tar"] = b"<html>rate limited</html>"
    with pytest.raises(DownloadError, match="not a readable tar"):
        download_senteval(tmp_path, base_url=server.url, manifest=MANIFEST)


def test_http_404(server: Server, tmp_path: Path) -> None:
    del server.files["/wiki1m_for_simcse.txt"]
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_wiki1m(tmp_path, base_url=server.url)


def test_server_unreachable(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"cannot reach 127\.0\.0\.1:\d+ .*--base-url") as err:
        download(tmp_path, "wiki1m", base_url=dead_url(), timeout=5)
    assert "\n" not in str(err.value)


def test_parse_items() -> None:
    assert parse_items("wiki1m, senteval") == ["senteval", "wiki1m"]
    with pytest.raises(ConfigError, match="unknown item"):
        parse_items("senteval,glove")


# ------------------------------------------------------------------------------ CLI
def run_cli(argv: list[str]) -> int:
    """``csekit`` through the real entry point when every sub-command exists, else data only."""
    try:
        from csekit.cli.main import main

        return main(argv)
    except ModuleNotFoundError:  # another engineer's sub-command is not written yet
        import argparse
        import sys

        from csekit.cli import data_cmd

        parser = argparse.ArgumentParser(prog="csekit")
        data_cmd.register(parser.add_subparsers())
        args = parser.parse_args(argv)
        try:
            return int(args.func(args) or 0)
        except CsekitError as err:
            print(f"csekit: error: {err}", file=sys.stderr)
            return err.exit_code


def test_cli_checksum_mismatch_exits_2(server: Server, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    # The fake archive cannot match the real SentEval checksums pinned in csekit.
    rc = run_cli(["data", "download", "--dest", str(tmp_path), "--what", "senteval",
                  "--base-url", server.url])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("csekit: error: ") and "checksum mismatch" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_download_wiki(server: Server, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    server.etags["/wiki1m_for_simcse.txt"] = sha(WIKI)
    rc = run_cli(["data", "download", "--dest", str(tmp_path), "--what", "wiki1m",
                  "--base-url", server.url])
    assert rc == 0 and (tmp_path / "wiki1m_for_simcse.txt").read_bytes() == WIKI
    assert "wiki1m:" in capsys.readouterr().out


def test_cli_unreachable_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = run_cli(["data", "download", "--dest", str(tmp_path), "--base-url", dead_url(),
                  "--timeout", "5"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach 127.0.0.1" in err and len(err.strip().splitlines()) == 1

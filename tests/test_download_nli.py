"""`csekit data download --nli` against the local HTTP server of test_download (127.0.0.1 only):
the file lands complete and verified, resumes after a dropped connection, and a wrong checksum
or a wrong header (an error page) removes it and fails with one line."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_download import Server, run_cli, sha

from csekit.data import TripletCorpus
from csekit.data.download import NLI_FILE, download, download_nli, parse_items
from csekit.data.fetch import DownloadError


def _nli_bytes(n: int = 3000) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["sent0", "sent1", "hard_neg"])
    for i in range(n):
        w.writerow([f"A man, number {i}, plays.", f"Someone plays {i}.", f'Nobody "{i}" plays.'])
    return buf.getvalue().encode()


NLI = _nli_bytes()


@pytest.fixture()
def server() -> Iterator[Server]:
    s = Server()
    s.files["/" + NLI_FILE] = NLI
    s.etags["/" + NLI_FILE] = sha(NLI)
    yield s
    s.close()


def test_nli_download_is_verified_and_reads_as_triplets(server: Server, tmp_path: Path) -> None:
    path = download(tmp_path, "nli", base_url=server.url)["nli"]
    assert path == tmp_path / NLI_FILE and path.read_bytes() == NLI
    corpus = TripletCorpus(path)
    assert corpus.mode == "triplets" and len(corpus) == 3000
    assert list(corpus)[7] == ("A man, number 7, plays.", "Someone plays 7.", 'Nobody "7" plays.')
    assert download_nli(tmp_path, base_url=server.url) == path  # present: no second transfer
    assert server.ranges == [None]


def test_nli_resumes_after_a_dropped_connection(server: Server, tmp_path: Path) -> None:
    server.cut_after["/" + NLI_FILE] = 5000
    with pytest.raises(DownloadError, match="run again to resume"):
        download_nli(tmp_path, base_url=server.url)
    assert (tmp_path / (NLI_FILE + ".part")).stat().st_size == 5000
    download_nli(tmp_path, base_url=server.url)
    assert (tmp_path / NLI_FILE).read_bytes() == NLI
    assert server.ranges == [None, "bytes=5000-"]


def test_nli_checksum_mismatch_and_wrong_header_remove_the_file(server: Server,
                                                                tmp_path: Path) -> None:
    server.etags["/" + NLI_FILE] = "0" * 64
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_nli(tmp_path, base_url=server.url)
    assert not list(tmp_path.iterdir())
    page = b"<html>Not the file</html>\n"
    server.files["/" + NLI_FILE] = page
    server.etags["/" + NLI_FILE] = sha(page)
    with pytest.raises(DownloadError, match="header 'sent0,sent1,hard_neg'"):
        download_nli(tmp_path, base_url=server.url)
    assert not (tmp_path / NLI_FILE).exists()


def test_cli_nli_flag(server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = run_cli(["data", "download", "--dest", str(tmp_path), "--nli", "--base-url", server.url])
    assert rc == 0 and (tmp_path / NLI_FILE).read_bytes() == NLI
    out = capsys.readouterr().out
    assert "nli:" in out and "wiki1m" not in out and "senteval" not in out
    assert parse_items("nli,wiki1m") == ["wiki1m", "nli"]
    server.files["/wiki1m_for_simcse.txt"] = b"one line\n"
    server.etags["/wiki1m_for_simcse.txt"] = sha(b"one line\n")
    rc = run_cli(["data", "download", "--dest", str(tmp_path / "b"), "--what", "wiki1m", "--nli",
                  "--base-url", server.url])
    assert rc == 0 and (tmp_path / "b" / NLI_FILE).is_file()
    assert (tmp_path / "b" / "wiki1m_for_simcse.txt").is_file()

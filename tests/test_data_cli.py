"""`csekit data check`: statistics of a corpus, and one-line errors with exit code 2."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from test_download import run_cli


def test_check_prints_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"one\n\ntwo\none\n\xff bad\n")
    assert run_cli(["data", "check", str(path), "--dedup", "--on-bad-line", "skip"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sentences"] == 2 and report["duplicates"] == 1 and report["blank"] == 1
    assert report["bad_lines"] == 1 and report["first_bad_lines"] == [5]


@pytest.mark.parametrize(
    "content, args, expected",
    [
        (b"", [], "no sentences"),
        (b"\n \n", [], "no sentences"),
        (b"ok\n\xc3\x28\n", [], ":2: invalid UTF-8"),
        (b"ok\nnul\x00\n", [], ":2: NUL byte"),
        (b"a\nb\nc\n", ["--batch-size", "4"], "fewer than one global batch of 4"),
    ],
)
def test_check_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes,
                             args: list[str], expected: str) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(content)
    assert run_cli(["data", "check", str(path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_gzip_bad_line_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.txt.gz"
    path.write_bytes(gzip.compress(b"a\nb\n\nc\xff\n"))
    assert run_cli(["data", "check", str(path)]) == 2
    assert f"{path}:4: invalid UTF-8" in capsys.readouterr().err

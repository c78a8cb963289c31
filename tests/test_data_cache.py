"""The corpus index cache on shared and odd file systems, and ``csekit data cache`` (issue #28).

- A writer's temp folder carries its host: another node's cleanup never deletes a folder in
  progress (it cannot see that node's processes); this host's killed writers are removed.
- ``flock`` unsupported (ENOSYS on Lustre, EOPNOTSUPP / ENOLCK on some NFS): the index is
  built without the lock, with a warning; concurrent builders each build and the first
  rename wins.
- ``csekit data cache`` lists what csekit wrote (sizes checked against a walk of the folder),
  and ``--prune`` removes only csekit's indexes, their locks and dead builds.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import time
from pathlib import Path

import pytest

import csekit.atomic as atomic_mod
from csekit.data import SentenceCorpus
from csekit.data import index_cache as ic


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(ic.CACHE_ENV, str(root))
    return root


def _corpus(path: Path, n: int = 30) -> Path:
    path.write_text("".join(f"sentence number {i} of {path.stem}\n" for i in range(n)))
    return path


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _build(folder: Path, inside=None) -> dict:  # type: ignore[no-untyped-def]
    def build(tmp: Path) -> dict:
        (tmp / "x.npy").write_bytes(b"123")
        if inside is not None:
            inside(tmp)
        return {"kind": "text", "stats": {"sentences": 1}}

    return ic._build_atomically(folder, build)


def test_another_hosts_build_in_progress_is_never_removed(cache: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Node A builds (its temp folder exists); node B's cleanup runs meanwhile. B cannot see
    A's processes, so to B A's pid is not alive: the folder must still survive."""
    base = cache / "corpus-index"
    base.mkdir(parents=True)
    folder = base / ("a" * 32)
    seen: dict[str, bool] = {}

    def other_node_cleans(tmp: Path) -> None:
        with monkeypatch.context() as m:
            m.setattr(atomic_mod.socket, "gethostname", lambda: "node-b")
            m.setattr(atomic_mod, "_pid_alive", lambda pid: False)
            m.setattr(atomic_mod.os, "getpid", lambda: 1)  # another process
            atomic_mod.remove_stale_temps(base, folder.name)
        seen["survived"] = tmp.is_dir()

    _build(folder, inside=other_node_cleans)
    assert seen["survived"]
    assert (folder / "meta.json").is_file()


def test_this_hosts_killed_build_is_removed(cache: Path) -> None:
    base = cache / "corpus-index"
    base.mkdir(parents=True)
    key = "b" * 32
    dead = base / f".{key}.tmp-{atomic_mod.host_name()}-{_dead_pid()}-0a1b2c3d"
    other = base / f".{key}.tmp-node-b-{_dead_pid()}-0a1b2c3d"  # another host: left alone
    older = base / f".{key}.tmp-{_dead_pid()}-0a1b2c3d"  # a name without a host: left alone
    for d in (dead, other, older):
        d.mkdir()
    _build(base / key)
    assert not dead.exists() and other.is_dir() and older.is_dir()
    assert atomic_mod.temp_name("x").startswith(f".x.tmp-{atomic_mod.host_name()}-{os.getpid()}-")


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK])
def test_no_flock_builds_without_a_lock(cache: Path, tmp_path: Path, code: int,
                                        monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    def no_flock(fd: int, op: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(ic.fcntl, "flock", no_flock)
    with caplog.at_level(logging.WARNING, logger="csekit.data.index_cache"):
        c = SentenceCorpus(_corpus(tmp_path / "c.txt"))
    assert len(c) == 30 and c.rows([0, 29]) == ["sentence number 0 of c", "sentence number 29 of c"]
    assert any("file locks are not supported" in r.message for r in caplog.records)
    # two builders at once, no lock: each builds in its own temp folder, the first rename wins
    # and the second one maps the winner's index
    desc = {"test": "race"}
    results = []

    def build(tmp: Path) -> dict:
        if not results:  # while this builder works, another one finishes first
            results.append(ic.get_or_build(desc, lambda t: {"stats": {"who": "second"}}))
        return {"stats": {"who": "first"}}

    first = ic.get_or_build(desc, build)
    assert first[0] == results[0][0] and first[1]["stats"] == {"who": "second"}
    assert [p.name for p in first[0].parent.iterdir() if ".tmp-" in p.name] == []


def test_other_flock_errors_still_raise(cache: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int, op: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(ic.fcntl, "flock", broken)
    with pytest.raises(OSError, match="I/O error"):
        SentenceCorpus(_corpus(tmp_path / "c.txt"))


def _walk_size(path: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(path) for f in fs)


def test_cli_cache_lists_and_prunes_only_csekits_files(cache: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    from csekit.cli.main import main

    old = SentenceCorpus(_corpus(tmp_path / "old.txt", 50)).index_dir
    new = SentenceCorpus(_corpus(tmp_path / "new.txt", 20)).index_dir
    base = old.parent
    month = time.time() - 40 * 86400
    os.utime(old / "meta.json", (month, month))  # last used 40 days ago
    (cache / "mine.txt").write_text("user file")
    (base / "notes.txt").write_text("user file")
    (base / "not-an-index").mkdir()
    dead = base / f".{'c' * 32}.tmp-{atomic_mod.host_name()}-{_dead_pid()}-0a1b2c3d"
    busy = base / f".{'d' * 32}.tmp-node-b-12345-0a1b2c3d"  # another host, just started
    for d in (dead, busy):
        d.mkdir()
        (d / "part").write_bytes(b"x" * 10)

    assert main(["data", "cache", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    by_path = {e["path"]: e for e in listed["entries"]}
    assert set(by_path) == {str(old), str(new), str(dead), str(busy)}
    assert by_path[str(old)]["bytes"] == _walk_size(old)
    assert by_path[str(new)]["rows"] == 20
    assert by_path[str(new)]["sources"] == [str((tmp_path / "new.txt").absolute())]
    assert by_path[str(old)]["days_unused"] >= 39.9

    # the rules without --prune only mark
    assert main(["data", "cache", "--older-than", "30"]) == 0
    out = capsys.readouterr().out
    assert "would remove (pass --prune) 2 entries" in out and old.is_dir() and dead.is_dir()

    assert main(["data", "cache", "--prune", "--older-than", "30"]) == 0
    assert "removed 2 entries" in capsys.readouterr().out
    assert not old.exists() and not dead.exists() and not (base / f"{old.name}.lock").exists()
    assert new.is_dir() and busy.is_dir() and (base / f"{new.name}.lock").exists()
    assert (cache / "mine.txt").read_text() == "user file"
    assert (base / "notes.txt").read_text() == "user file" and (base / "not-an-index").is_dir()

    assert main(["data", "cache", "--prune", "--max-size", "1"]) == 0  # all indexes go
    capsys.readouterr()
    assert not new.exists() and busy.is_dir() and (base / "notes.txt").exists()
    assert len(SentenceCorpus(tmp_path / "new.txt")) == 20  # rebuilt on its next use


def test_cli_cache_errors_are_one_line(cache: Path, capsys: pytest.CaptureFixture) -> None:
    from csekit.cli.main import main

    assert main(["data", "cache", "--prune"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["csekit: error: --prune needs --older-than DAYS and/or --max-size SIZE"]
    assert main(["data", "cache", "--max-size", "lots"]) == 2
    assert "not a size" in capsys.readouterr().err


def test_parse_size() -> None:
    from csekit.data.cache_admin import parse_size

    assert parse_size("20GB") == 20 * 10**9 and parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_size("500m") == 500 * 10**6 and parse_size("123") == 123

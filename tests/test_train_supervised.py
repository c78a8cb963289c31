"""Supervised training end to end on a tiny BERT (CPU, fp32): the hard negatives are really
used, the mode comes from the file and is saved, and an interrupted run resumes exactly.

Oracles: (1) with ``hard_neg`` identical to ``sent1`` and dropout 0, z3_i == z2_i, so row i's
own hard negative ties with its positive and the InfoNCE loss can never fall below log 2
(exp(l)/(exp(l) + exp(l) + ...) <= 1/2), while the very same run on pairs reaches about 0;
(2) an uninterrupted run is the reference for an interrupted + resumed one.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_train import WORDS, assert_resume_exact
from test_train import config as base_config

from csekit.errors import ConfigError
from csekit.training import TrainConfig, Trainer


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10)))


def make_nli(path: Path, n: int = 64, *, hard_is_positive: bool = False, pairs: bool = False,
             seed: int = 0) -> Path:
    """sent1 = sent0's words reversed (a learnable positive); hard_neg another sentence, or
    sent1 itself (``hard_is_positive``)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sent0", "sent1"] if pairs else ["sent0", "sent1", "hard_neg"])
        for _ in range(n):
            s0 = _sentence(rng)
            s1 = " ".join(reversed(s0.split()))
            hn = s1 if hard_is_positive else _sentence(rng)
            w.writerow([s0, s1] if pairs else [s0, s1, hn])
    return path


def config(tiny: Path, data: Path, out: Path, **kw: object) -> TrainConfig:
    """test_train's config with supervised SimCSE's pooling ([CLS] + head kept) and a higher lr."""
    return base_config(tiny, data, out, **{"learning_rate": 3e-3, "eval_steps": 1000,
                                           "pooler": "cls", "mlp": "always", **kw})


def test_hard_negative_equal_to_positive_keeps_the_loss_above_log2(tiny_bert_dir: Path,
                                                                   tmp_path: Path) -> None:
    # mean pooling: sent1 (sent0 reversed) is learnable within a few dozen steps
    kw = {"max_steps": 40, "dropout": 0.0, "pooler": "avg", "mlp": "none"}
    pairs = Trainer(config(tiny_bert_dir, make_nli(tmp_path / "p.csv", pairs=True),
                           tmp_path / "p", **kw)).train()
    tied = Trainer(config(tiny_bert_dir, make_nli(tmp_path / "t.csv", hard_is_positive=True),
                          tmp_path / "t", **kw)).train()
    assert len(pairs.losses) == len(tied.losses) == 40
    assert pairs.losses[0] > 1.0 and max(pairs.losses[-5:]) < 0.05, pairs.losses
    assert min(tied.losses) >= math.log(2) - 1e-4, min(tied.losses)
    assert tied.losses[0] > math.log(2) + 0.5  # it starts well above the bound, then meets it
    assert min(tied.losses[-5:]) < math.log(2) + 0.1, tied.losses[-5:]


def test_mode_is_chosen_from_the_columns_logged_and_saved(tiny_bert_dir: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    data = make_nli(tmp_path / "nli.csv")
    with caplog.at_level(logging.INFO, logger="csekit"):
        t = Trainer(config(tiny_bert_dir, data, tmp_path / "r", max_steps=2,
                           objective="focal", hard_negative_weight=0.5))
        res = t.train()
    assert res.steps == 2
    assert "training mode: triplets (supervised triplets: anchor sent0, positive sent1, " \
           "hard negative hard_neg" in caplog.text
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["supervision"] == "triplets" and saved["hard_negative_weight"] == 0.5
    meta = json.loads((tmp_path / "r" / "csekit.json").read_text())
    assert "triplets" in json.dumps(meta)
    # the objective got the weight and the third view (its stats say so)
    logged = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert any("obj/triplet_neg_cos" in rec for rec in logged)
    assert t.objective.hard_negative_weight == 0.5
    # supervised SimCSE's pooling: the saved model keeps the MLP head at test time
    from csekit.modeling.encoder import Encoder

    enc = Encoder.from_pretrained(str(tmp_path / "r"))
    assert enc.mlp == "always" and enc.uses_head_at_eval and enc.head is not None
    trained = t.accelerator.unwrap_model(t.model).eval()
    batch = trained.tokenize(["a river in the north", "the film was released"], 16)
    with torch.no_grad():
        torch.testing.assert_close(enc.eval()(**batch), trained(**batch), rtol=0, atol=1e-6)


def test_hard_negative_weight_needs_triplets(tiny_bert_dir: Path, tmp_path: Path) -> None:
    data = make_nli(tmp_path / "p.csv", pairs=True)
    with pytest.raises(ConfigError, match="needs triplets"):
        Trainer(config(tiny_bert_dir, data, tmp_path / "r", hard_negative_weight=1.0))
    with pytest.raises(ConfigError, match="columns give pairs"):
        Trainer(config(tiny_bert_dir, data, tmp_path / "r", supervision="triplets"))


@pytest.mark.parametrize("objective", ["clusterns-focal"])
def test_supervised_interrupted_resume_equals_uninterrupted(tiny_bert_dir: Path, tmp_path: Path,
                                                            objective: str) -> None:
    data = make_nli(tmp_path / "nli.csv", n=80)
    kw = {"objective": objective, "n_clusters": 4, "kmeans_start_cosine": 0.99, "max_steps": 7,
              "save_steps": 3, "bml_weight": 1e-3, "hard_negative_weight": 0.3, "mlp": "train",
              "learning_rate": 5e-4}
    # (7 steps, stopped after 4: the resumed part crosses the epoch end at 5)
    ref, _ = assert_resume_exact(
        lambda name, **extra: config(tiny_bert_dir, data, tmp_path / name, **kw, **extra), 4)
    assert len(ref.losses) == 7

    a, b = tmp_path / "a" / "checkpoints" / "step-7", tmp_path / "b" / "checkpoints" / "step-7"
    oa = torch.load(a / "objective.pt", weights_only=True)
    ob = torch.load(b / "objective.pt", weights_only=True)
    assert any(k.endswith("centroids") for k in oa)
    for k in oa:
        torch.testing.assert_close(ob[k], oa[k], rtol=0, atol=1e-6)
    ma, mb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    for k in ma:
        torch.testing.assert_close(mb[k], ma[k], rtol=0, atol=1e-6)

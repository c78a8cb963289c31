"""Gradient caching through the Trainer and the CLI (issue #26).

- a cached run equals an uncached one (dropout 0; the cached path really ran);
- a cached run interrupted and resumed equals the uninterrupted cached run (dropout on: the
  dropout masks of the resumed steps are those of the uninterrupted run);
- ``--skip-nonfinite`` with caching drops the NaN update (model and centroids unchanged) as
  the uncached run does;
- 2 processes cached == 1 process cached == 1 process uncached (torchrun, gloo);
- bad ``--mini-batch-size``: one line, exit 2.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from csekit.cli.main import main
from csekit.errors import ConfigError
from csekit.training import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed_train import OPTS, STEPS, _losses, torchrun_train
from test_train import (
    _nan_at,
    assert_resume_exact,
    assert_same_weights_and_centroids,
    config,
    make_corpus,
)
from test_train_supervised import make_nli

import csekit.training.step as step_module


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    return make_corpus(tmp_path / "corpus.txt", n=200)


@pytest.fixture()
def cached_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the cached steps (the Trainer really ran the cached path)."""
    calls: list[int] = []
    original = step_module.cached_forward_backward

    def spy(**kw):  # type: ignore[no-untyped-def]
        calls.append(kw["mini_batch_size"])
        return original(**kw)

    monkeypatch.setattr(step_module, "cached_forward_backward", spy)
    return calls


KW = {"objective": "clusterns-focal", "n_clusters": 4, "kmeans_start_cosine": 0.99,
      "bml_weight": 1e-3, "mlp": "train", "pooler": "cls", "learning_rate": 3e-5}


@pytest.mark.parametrize("data", ["sentences", "triplets"])
def test_cached_run_equals_uncached_run(tiny_bert_dir: Path, corpus: Path, tmp_path: Path,
                                        cached_calls: list[int], data: str) -> None:
    kw = dict(KW, max_steps=4, dropout=0.0, save_steps=4, kmeans_start_cosine=1.0)
    if data == "triplets":
        corpus = make_nli(tmp_path / "nli.csv", n=100)
        kw["hard_negative_weight"] = 0.5
    ref = Trainer(config(tiny_bert_dir, corpus, tmp_path / "a", **kw)).train()
    assert not cached_calls
    got = Trainer(config(tiny_bert_dir, corpus, tmp_path / "b", mini_batch_size=5, **kw)).train()
    assert cached_calls == [5] * 4
    assert got.losses == pytest.approx(ref.losses, rel=2e-6)  # (fp32 rounding)
    a, b = tmp_path / "a" / "checkpoints" / "step-4", tmp_path / "b" / "checkpoints" / "step-4"
    assert_same_weights_and_centroids(a, b, atol=1e-5)


def test_cached_resume_equals_uninterrupted(tiny_bert_dir: Path, corpus: Path,
                                            tmp_path: Path) -> None:
    kw = dict(KW, max_steps=6, save_steps=3, dropout=0.1, mini_batch_size=4)
    assert_resume_exact(lambda name, **extra: config(tiny_bert_dir, corpus, tmp_path / name,
                                                     **kw, **extra), 4)
    assert_same_weights_and_centroids(tmp_path / "a" / "checkpoints" / "step-6",
                                      tmp_path / "b" / "checkpoints" / "step-6")


@pytest.mark.parametrize("mini", [None, 4])
def test_skip_nonfinite_with_caching(tiny_bert_dir: Path, corpus: Path, tmp_path: Path,
                                     mini: int | None) -> None:
    t = Trainer(config(tiny_bert_dir, corpus, tmp_path / "r", skip_nonfinite=True,
                       mini_batch_size=mini, objective="clusterns", n_clusters=4,
                       kmeans_start_cosine=0.99, max_steps=3))
    model = t.accelerator.unwrap_model(t.model)
    m0 = {k: v.clone() for k, v in model.state_dict().items()}
    _nan_at(t, 1)  # the first update is NaN: model and centroids must not move
    original = t._step

    def step(data):  # type: ignore[no-untyped-def]
        out = original(data)
        if not out[2]:
            for k, v in model.state_dict().items():
                assert torch.equal(v, m0[k]), k
            assert not t.objective.started
        return out

    t._step = step  # type: ignore[method-assign]
    res = t.train()
    assert res.steps == 3 and t.state.skipped_nonfinite == 1
    assert all(math.isfinite(x) for x in res.losses) and t.objective.started


def test_bf16_cached_runs_close_to_uncached(tiny_bert_dir: Path, corpus: Path,
                                            tmp_path: Path) -> None:
    """bf16 autocast on the CPU: the mini-batches' matmuls round differently from the whole
    batch's, so the losses agree to bf16 precision, not exactly."""
    kw = dict(KW, max_steps=2, dropout=0.0, precision="bf16")
    ref = Trainer(config(tiny_bert_dir, corpus, tmp_path / "a", **kw)).train()
    got = Trainer(config(tiny_bert_dir, corpus, tmp_path / "b", mini_batch_size=4, **kw)).train()
    assert got.losses == pytest.approx(ref.losses, rel=2e-2)


@pytest.mark.slow  # torchrun, two processes: 20-35 s on the shared 2-core machine
def test_two_processes_cached_equal_one(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """2 processes cached (mini-batch 3 of a per-process batch of 8) == 1 process cached
    (mini-batch 3 of 16) == 1 process uncached, dropout 0 (the opts of
    tests/test_distributed_train.py)."""
    corpus = make_corpus(tmp_path / "corpus.txt", n=200)
    opts = dict(OPTS, mini_batch_size=3)
    runs = {}
    for name, extra in (("plain", {}), ("one", {"mini_batch_size": 3})):
        cfg = {k: v for k, v in OPTS.items()} | extra
        runs[name] = Trainer(TrainConfig.from_dict(dict(
            model=str(tiny_bert_dir), train_file=str(corpus), output_dir=str(tmp_path / name),
            progress=False, **cfg))).train()
    proc = torchrun_train(tiny_bert_dir, corpus, tmp_path / "two", opts, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert TrainConfig.from_yaml(tmp_path / "two" / "config.yaml").mini_batch_size == 3
    l_plain, l_one, l_two = (_losses(tmp_path / n) for n in ("plain", "one", "two"))
    assert len(l_two) == STEPS
    assert l_one == pytest.approx(l_plain, abs=1e-5)
    assert l_two == pytest.approx(l_one, abs=1e-5)
    ck = f"checkpoints/step-{STEPS}"
    assert_same_weights_and_centroids(tmp_path / "plain" / ck, tmp_path / "one" / ck, atol=1e-5)
    assert_same_weights_and_centroids(tmp_path / "one" / ck, tmp_path / "two" / ck, atol=1e-5)


def test_bad_mini_batch_size_exit_2_one_line(tiny_bert_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    corpus = make_corpus(tmp_path / "c.txt", n=64)
    base = ["--model", str(tiny_bert_dir), "--train-file", str(corpus), "--batch-size", "8",
            "--max-steps", "1", "--no-progress"]
    for value, needle in (("0", "positive integer"), ("-3", "positive integer"),
                          ("9", "larger than the batch 8")):
        rc = main(["train", *base, "--output-dir", str(tmp_path / f"o{value}"),
                   "--mini-batch-size", value])
        err = capsys.readouterr().err.strip()
        lines = [x for x in err.splitlines() if x.strip()]
        assert rc == 2 and len(lines) == 1 and needle in lines[0], err
        assert lines[0].startswith("csekit: error:") and "Traceback" not in err
    cfg = TrainConfig(train_file="x", batch_size=64, mini_batch_size=32)
    cfg.validate(world_size=2)  # 32 of the per-process 32: allowed
    with pytest.raises(ConfigError, match="per-process batch 16 .64 over 4 processes"):
        cfg.validate(world_size=4)
    with pytest.raises(ConfigError, match="mini_batch_size"):
        TrainConfig.from_dict({"mini_batch_size": "x"})

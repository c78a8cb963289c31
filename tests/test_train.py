"""End-to-end training on a tiny BERT (CPU, fp32): loss goes down, resume is exact, NaN handling.

Oracles: an uninterrupted run is the reference for an interrupted + resumed one (losses, model
tensors and centroids must match); the loss of a trained model must fall below its start.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from csekit.errors import CsekitError, TrainingError
from csekit.training import TrainConfig, Trainer

WORDS = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "his", "her", "an", "it", "are", "were", "this", "be", "which", "or", "has", "had", "first", "also", "new", "one", "two", "after", "city", "state", "team", "film", "school", "river", "music", "war", "world", "year", "time", "people", "group", "house", "early", "album", "song", "game", "series", "season", "church", "north", "south", "party", "club", "station", "village", "player", "family", "born", "known", "became", "used", "released", "including", "called", "national", "county", "county", "league", "district", "museum"]


def make_corpus(path: Path, n: int = 400, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) for _ in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    return make_corpus(tmp_path / "corpus.txt")


def config(tiny: Path, corpus: Path, out: Path, **kw: object) -> TrainConfig:
    base = {"model": str(tiny), "train_file": str(corpus), "output_dir": str(out), "batch_size": 16,
                "learning_rate": 5e-4, "max_steps": 8, "eval_steps": 100, "logging_steps": 1,
                "progress": False, "pooler": "avg", "mlp": "none", "seed": 7}
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_loss_decreases(tiny_bert_dir: Path, corpus: Path, tmp_path: Path) -> None:
    cfg = config(tiny_bert_dir, corpus, tmp_path / "run", max_steps=10, batch_size=16,
                 learning_rate=3e-3, pooler="avg", mlp="none")
    res = Trainer(cfg).train()
    assert len(res.losses) == 10 and res.stopped == "completed"
    first, last = sum(res.losses[:2]) / 2, sum(res.losses[-3:]) / 3
    assert first > 1.0 and last < 0.5 * first, (first, last)
    out = tmp_path / "run"
    assert (out / "modules.json").exists() and (out / "csekit.json").exists()
    assert (out / "metrics.jsonl").exists() and (out / "config.yaml").exists()
    assert (out / "checkpoints" / "step-10" / "trainer_state.json").exists()


def assert_same_weights_and_centroids(a: Path, b: Path, *, atol: float = 1e-6) -> None:
    """Two checkpoint folders hold the same model weights and the same (4, 32) centroids."""
    oa = torch.load(a / "objective.pt", weights_only=True)
    ob = torch.load(b / "objective.pt", weights_only=True)
    cents = [k for k in oa if k.endswith("centroids")]
    assert cents and oa[cents[0]].shape == (4, 32)
    for k in oa:
        torch.testing.assert_close(ob[k], oa[k], rtol=0, atol=atol, msg=k)
    ma, mb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert ma.keys() == mb.keys()
    for k in ma:
        torch.testing.assert_close(mb[k], ma[k], rtol=0, atol=atol, msg=k)


def _stop_after(trainer: Trainer, step: int, signum: int) -> None:
    """Send ``signum`` to this process while the update producing ``step`` runs."""
    original = trainer._step

    def wrapped(data):  # type: ignore[no-untyped-def]
        out = original(data)
        if trainer.state.step == step - 1:
            os.kill(os.getpid(), signum)
        return out

    trainer._step = wrapped  # type: ignore[method-assign]


def assert_resume_exact(make: Callable[..., TrainConfig], stop_at: int) -> tuple[Any, Any]:
    """The oracle of exact resume: ``make(name, **extra)`` builds a run's config writing to
    ``name``; a run stopped by SIGTERM after ``stop_at`` updates and resumed gives the
    uninterrupted run's losses (before and after the stop). Returns (uninterrupted, resumed)."""
    ref = Trainer(make("a")).train()
    assert ref.stopped == "completed" and len(ref.losses) > stop_at
    t = Trainer(make("b"))
    _stop_after(t, stop_at, signal.SIGTERM)
    part = t.train()
    assert part.stopped == "interrupted" and part.steps == stop_at
    assert part.losses == pytest.approx(ref.losses[:stop_at], abs=1e-6)
    rest = Trainer(make("b", resume=True)).train()
    assert rest.stopped == "completed" and rest.steps == len(ref.losses)
    assert rest.losses == pytest.approx(ref.losses[stop_at:], abs=1e-6)
    return ref, rest


@pytest.mark.parametrize("objective", ["clusterns-focal"])
def test_interrupted_resume_equals_uninterrupted(tiny_bert_dir: Path, corpus: Path,
                                                  tmp_path: Path, objective: str) -> None:
    kw = {"objective": objective, "n_clusters": 4, "kmeans_start_cosine": 0.99, "max_steps": 8,
              "save_steps": 3, "grad_accum_steps": 1, "bml_weight": 1e-3, "mlp": "train", "pooler": "cls"}
    ref = Trainer(config(tiny_bert_dir, corpus, tmp_path / "a", **kw)).train()
    assert ref.stopped == "completed" and len(ref.losses) == 8

    t = Trainer(config(tiny_bert_dir, corpus, tmp_path / "b", **kw))
    _stop_after(t, 5, signal.SIGTERM)
    part = t.train()
    assert part.stopped == "interrupted" and part.exit_code == 143 and part.steps == 5
    assert (tmp_path / "b" / "checkpoints" / "step-5").is_dir()
    assert part.losses == pytest.approx(ref.losses[:5], abs=1e-6)

    rest = Trainer(config(tiny_bert_dir, corpus, tmp_path / "b", resume=True, **kw)).train()
    assert rest.stopped == "completed" and rest.steps == 8
    assert rest.losses == pytest.approx(ref.losses[5:], abs=1e-6)

    a, b = tmp_path / "a" / "checkpoints" / "step-8", tmp_path / "b" / "checkpoints" / "step-8"
    assert_same_weights_and_centroids(a, b)
    # metrics.jsonl of the resumed run has each step once
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text()
             .splitlines() if "loss" in json.loads(x)]
    assert steps == list(range(1, 9))


def _nan_at(trainer: Trainer, step: int) -> None:
    """Make the loss NaN on the objective call of update ``step`` (counting calls, once)."""
    obj = trainer.objective
    original = obj.forward
    calls = [0]

    def forward(z1, z2):  # type: ignore[no-untyped-def]
        out = original(z1, z2)
        calls[0] += 1
        if calls[0] == step:
            out.loss = out.loss * float("nan")
        return out

    obj.forward = forward  # type: ignore[method-assign]


def test_nonfinite_loss_stops_and_keeps_checkpoint(tiny_bert_dir: Path, corpus: Path,
                                                   tmp_path: Path) -> None:
    t = Trainer(config(tiny_bert_dir, corpus, tmp_path / "r", save_steps=2))
    _nan_at(t, 4)
    with pytest.raises(TrainingError, match=r"non-finite loss .* at step 4.*step-2"):
        t.train()
    state = (tmp_path / "r" / "checkpoints" / "step-2" / "trainer_state.json")
    assert state.exists()
    assert not (tmp_path / "r" / "checkpoints" / "step-4").exists()


def test_skip_nonfinite_skips_the_update(tiny_bert_dir: Path, corpus: Path,
                                         tmp_path: Path) -> None:
    t = Trainer(config(tiny_bert_dir, corpus, tmp_path / "r", skip_nonfinite=True,
                       objective="clusterns", n_clusters=4, kmeans_start_cosine=0.99))
    model = t.accelerator.unwrap_model(t.model)
    _nan_at(t, 1)  # the very first update is NaN: model and centroids must not move
    original_step = t._step
    skipped = []

    def step(data):  # type: ignore[no-untyped-def]
        m0 = {k: v.clone() for k, v in model.state_dict().items()}
        o0 = {k: v.clone() for k, v in t.objective.state_dict().items()}
        out = original_step(data)
        if not out[2]:
            skipped.append(t.state.step + 1)
            for k, v in model.state_dict().items():
                assert torch.equal(v, m0[k]), k
            o1 = t.objective.state_dict()
            for k, v in o0.items():
                assert torch.equal(o1[k], v), k
            assert not t.objective.started  # the NaN step had started clustering: undone
        return out

    t._step = step  # type: ignore[method-assign]
    res = t.train()
    assert res.stopped == "completed" and res.steps == 8 and len(res.losses) == 8
    assert t.state.skipped_nonfinite == 1 and skipped == [1]
    assert t.objective.started
    assert all(math.isfinite(x) for x in res.losses)  # no NaN recorded


def test_existing_checkpoints_need_resume(tiny_bert_dir: Path, corpus: Path,
                                          tmp_path: Path) -> None:
    Trainer(config(tiny_bert_dir, corpus, tmp_path / "r", max_steps=2)).train()
    with pytest.raises(CsekitError, match="--resume"):
        Trainer(config(tiny_bert_dir, corpus, tmp_path / "r", max_steps=4))
    res = Trainer(config(tiny_bert_dir, corpus, tmp_path / "r", max_steps=2,
                         resume=True)).train()
    assert res.steps == 2 and res.losses == []  # finished run: nothing to redo


def test_bf16_autocast_on_cpu_keeps_fp32_state(tiny_bert_dir: Path, corpus: Path,
                                                tmp_path: Path) -> None:
    t = Trainer(config(tiny_bert_dir, corpus, tmp_path / "r", max_steps=3, precision="bf16",
                       objective="clusterns", n_clusters=4, kmeans_start_cosine=1.0))
    assert t.accelerator.mixed_precision == "bf16"
    res = t.train()
    assert res.steps == 3 and all(torch.isfinite(torch.tensor(res.losses)))
    ck = tmp_path / "r" / "checkpoints" / "step-3"
    assert all(v.dtype == torch.float32 for v in load_file(str(ck / "model.safetensors")).values())
    obj = torch.load(ck / "objective.pt", weights_only=True)
    cents = [v for k, v in obj.items() if k.endswith("centroids")]
    assert cents and cents[0].dtype == torch.float32 and cents[0].shape == (4, 32)


def test_grad_accumulation_consumes_k_batches_per_update(tiny_bert_dir: Path, corpus: Path,
                                                         tmp_path: Path) -> None:
    """K=2: each update reads two global batches (each its own negatives); the recorded loss
    is their mean, and the first update's loss equals the mean of the first two batch losses
    of a K=1 run (same data order, same initial weights; lr 1e-9 so that the K=1 run's first
    update does not change its second loss beyond 1e-6)."""
    k1 = Trainer(config(tiny_bert_dir, corpus, tmp_path / "k1", max_steps=2, dropout=0.0,
                        learning_rate=1e-9)).train()
    t = Trainer(config(tiny_bert_dir, corpus, tmp_path / "k2", max_steps=2, grad_accum_steps=2,
                       dropout=0.0, learning_rate=1e-9))
    k2 = t.train()
    assert k2.steps == 2 and t.state.batches_in_epoch == 4
    assert t.state.sentences_seen == 4 * 16
    assert k2.losses[0] == pytest.approx((k1.losses[0] + k1.losses[1]) / 2, abs=1e-6)


def test_sigint_checkpoints_and_exits_130(tiny_bert_dir: Path, corpus: Path,
                                          tmp_path: Path) -> None:
    t = Trainer(config(tiny_bert_dir, corpus, tmp_path / "r", max_steps=6, save_steps=100))
    _stop_after(t, 2, signal.SIGINT)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under nohup / &
    res = t.train()
    assert (res.stopped, res.exit_code, res.steps) == ("interrupted", 130, 2)
    state = json.loads((tmp_path / "r" / "checkpoints" / "step-2" / "trainer_state.json")
                       .read_text())
    assert state["step"] == 2 and state["batches_in_epoch"] == 2 and not state["finished"]
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler restored

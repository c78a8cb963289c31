"""Interruption in a real subprocess: SIGTERM -> resumable checkpoint and exit 143; SIGKILL in
the middle of a checkpoint save leaves the previous checkpoint and the best model intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from csekit.atomic import PAUSE_ENV
from csekit.training import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from test_train import make_corpus
from test_train_eval import make_senteval


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, CI="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **extra)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early (rc {proc.returncode}): "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("timed out")


def _loss_steps(out: Path) -> list[int]:
    p = out / "metrics.jsonl"
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return [r["step"] for r in rows if "loss" in r]


def _args(tiny: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(tiny), "--train-file", str(corpus), "--output-dir", str(out),
            "--batch-size", "8", "--pooler", "avg", "--mlp", "none", "--logging-steps", "1",
            "--objective", "clusterns", "--n-clusters", "4", "--kmeans-start-cosine", "1.0",
            *extra]


def test_sigterm_writes_resumable_checkpoint(tiny_bert_dir: Path, tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "c.txt", n=200)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "csekit", "train",
           *_args(tiny_bert_dir, corpus, out, "--max-steps", "100000", "--eval-steps", "100000")]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(lambda: len(_loss_steps(out)) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "--resume" in stdout
    done = _loss_steps(out)[-1]
    ck = out / "checkpoints" / f"step-{done}"
    assert (ck / "trainer_state.json").exists()
    state = json.loads((ck / "trainer_state.json").read_text())
    assert state["step"] == done and not state["finished"]
    assert state["batches_in_epoch"] == done  # 25 batches an epoch; done is small

    # --resume continues from there (in-process, two more steps)
    cfg = TrainConfig.from_dict({
        "model": str(tiny_bert_dir), "train_file": str(corpus), "output_dir": str(out), "batch_size": 8,
        "pooler": "avg", "mlp": "none", "objective": "clusterns", "n_clusters": 4, "kmeans_start_cosine": 1.0,
        "max_steps": done + 2, "eval_steps": 100000, "progress": False, "resume": True, "logging_steps": 1})
    t = Trainer(cfg)
    res = t.train()
    assert res.stopped == "completed" and res.steps == done + 2 and len(res.losses) == 2
    assert t.objective.started  # centroids came back from the checkpoint
    assert _loss_steps(out) == list(range(1, done + 3))


def test_sigkill_mid_save_keeps_previous_checkpoint_and_best(tiny_bert_dir: Path,
                                                              tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "c.txt", n=200)
    data = make_senteval(tmp_path / "senteval")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "csekit", "train",
           *_args(tiny_bert_dir, corpus, out, "--max-steps", "6", "--eval-steps", "2", "--save-steps", "2",
                  "--data-dir", str(data), "--learning-rate", "1e-3")]
    proc = subprocess.Popen(cmd, env=_env(**{PAUSE_ENV: "120@4"}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ckroot = out / "checkpoints"

    def paused() -> bool:
        return ckroot.is_dir() and any(p.name.startswith(".step-4.tmp-")
                                       and (p / "optimizer.pt").exists()
                                       for p in ckroot.iterdir())

    _wait_for(paused, proc)
    proc.kill()  # SIGKILL in the middle of writing checkpoint step-4
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # the previous checkpoint is complete and loadable
    prev = ckroot / "step-2"
    assert not (ckroot / "step-4").exists()
    state = json.loads((prev / "trainer_state.json").read_text())
    assert state["step"] == 2
    for name in ("optimizer.pt", "scheduler.pt", "objective.pt", "rng.pt"):
        torch.load(prev / name, weights_only=True)
    assert load_file(str(prev / "model.safetensors"))
    # the best model at the root is loadable and matches its metadata
    from csekit.modeling.encoder import Encoder

    meta = json.loads((out / "csekit.json").read_text())
    assert meta["dev"]["step"] in (2, 4)
    Encoder.from_pretrained(str(out)).encode(["a sentence"])

    # --resume removes the half-written folder and finishes the run from step 2
    cfg = TrainConfig.from_dict({
        "model": str(tiny_bert_dir), "train_file": str(corpus), "output_dir": str(out), "batch_size": 8,
        "pooler": "avg", "mlp": "none", "objective": "clusterns", "n_clusters": 4, "kmeans_start_cosine": 1.0,
        "max_steps": 6, "eval_steps": 2, "save_steps": 2, "data_dir": str(data), "learning_rate": 1e-3, "progress": False,
        "resume": True, "logging_steps": 1, "final_test": False})
    res = Trainer(cfg).train()
    assert res.stopped == "completed" and res.steps == 6 and len(res.losses) == 4
    assert sorted(p.name for p in ckroot.iterdir()) == ["step-4", "step-6"]

"""Several processes agree, or the run stops (issue #18). CPU, gloo, torchrun on 127.0.0.1.

- A node-local ``--output-dir`` on a 2-node job (each "node" is a torchrun with its own
  working directory, so the relative ``--output-dir run`` is a different folder on each)
  stops both processes with the same one-line error before any training.
- Dropout differs across processes (seed + rank): same input, same weights, different masks;
  rank 0's masks are those of a single process.
- A 2-process run with dropout, dev evaluation, patience, gradient accumulation and a
  SIGTERM mid-run, continued with ``--resume``, ends with the same weights and centroids as
  the uninterrupted 2-process run (1e-6). Marked slow (three torchrun launches, ~1 min).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from csekit.atomic import PAUSE_ENV
from csekit.training import TrainConfig, Trainer
from csekit.training.agreement import SHARED_WAIT_ENV

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed_train import _free_port
from test_train import assert_same_weights_and_centroids, make_corpus
from test_train_eval import make_senteval

HERE = Path(__file__).parent



def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", CI="1", HF_HUB_OFFLINE="1",
                TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)


def _torchrun(nproc: int, *, nnodes: int = 1, node_rank: int = 0, port: int | None = None,
              log_dir: Path | None = None) -> list[str]:
    """torchrun on 127.0.0.1. One node: ``--standalone``, whose agent binds a free port itself
    and holds it (no port picked here and released: see tests/_gloo.py for that race). Several
    nodes (each a torchrun here) need a port they all know: ``port``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes),
           "--nproc_per_node", str(nproc)]
    if nnodes == 1 and port is None:
        cmd += ["--standalone"]
    else:
        if port is None:
            raise ValueError("several nodes need a port")
        cmd += ["--node_rank", str(node_rank), "--master_addr", "127.0.0.1",
                "--master_port", str(port)]
    if log_dir is not None:  # each worker's stdout/stderr in its own file
        cmd += ["--log-dir", str(log_dir), "--redirects", "3"]
    return cmd


def _worker_stderr(log_dir: Path) -> list[str]:
    return [p.read_text() for p in sorted(log_dir.rglob("stderr.log"))]


def test_node_local_output_dir_stops_every_process(tiny_bert_dir: Path, tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus.txt", n=100)
    port = _free_port()
    procs = []
    for node in (0, 1):
        cwd = tmp_path / f"node{node}"
        cwd.mkdir()
        if node == 0:  # rank 0's local folder holds a checkpoint; the other node sees nothing
            ck = cwd / "run" / "checkpoints" / "step-2"
            ck.mkdir(parents=True)
            (ck / "trainer_state.json").write_text('{"step": 2}')
        cmd = _torchrun(1, nnodes=2, node_rank=node, port=port, log_dir=tmp_path / f"logs{node}")
        cmd += ["-m", "csekit", "train", "--model", str(tiny_bert_dir), "--train-file",
                str(corpus), "--output-dir", "run", "--batch-size", "8", "--max-steps", "2",
                "--resume", "--pooler", "avg", "--mlp", "none"]
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=_env(**{SHARED_WAIT_ENV: "1"}),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    for p in procs:
        p.communicate(timeout=240)
        assert p.returncode != 0
    errs = _worker_stderr(tmp_path / "logs0") + _worker_stderr(tmp_path / "logs1")
    assert len(errs) == 2
    for err in errs:
        lines = [x for x in err.splitlines() if x.startswith("csekit: error:")]
        assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
        assert "--output-dir run is not shared" in lines[0] and "process(es) 1" in lines[0]
    assert not (tmp_path / "node1" / "run" / "checkpoints").exists()  # nothing trained
    assert not (tmp_path / "node0" / "run" / "metrics.jsonl").exists()


def test_dropout_masks_differ_across_processes(tiny_bert_dir: Path, tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus.txt", n=100)
    out = tmp_path / "two"
    cmd = _torchrun(2) + [str(HERE / "_dropout_probe.py"), str(tiny_bert_dir),
                                             str(corpus), str(out), "0.1"]
    proc = subprocess.run(cmd, env=_env(), check=False, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    z0, z1 = torch.load(out / "probe.pt", weights_only=True)
    assert not torch.allclose(z0, z1, atol=1e-4)  # rank 1 drew other dropout masks
    # rank 0 == a single process with the same seed (seed + 0)
    cfg = TrainConfig.from_dict({"model": str(tiny_bert_dir), "train_file": str(corpus),
                                     "output_dir": str(tmp_path / "one"), "batch_size": 8,
                                     "max_steps": 1, "dropout": 0.1, "pooler": "avg", "mlp": "none",
                                     "progress": False, "seed": 11})
    t = Trainer(cfg)
    enc = t.accelerator.unwrap_model(t.model)
    enc.train()
    with torch.no_grad():
        z = enc(**enc.tokenize(["the city was known for its river", "a new album was released"]))
    torch.testing.assert_close(z, z0, rtol=0, atol=1e-6)


# ClusterNS (centroids from the first step), dropout on, grad accumulation 2, STS-B dev
# every 2 updates with patience 3, a checkpoint every 2 updates.
RUN = {"objective": "clusterns", "n_clusters": 4, "kmeans_start_cosine": 1.0, "batch_size": 16,
           "learning_rate": 1e-3, "max_steps": 8, "dropout": 0.1, "pooler": "cls", "mlp": "train",
           "grad_accum_steps": 2, "eval_steps": 2, "patience": 3, "save_steps": 2, "logging_steps": 1,
           "seed": 5, "no_final_test": None, "no_progress": None}


def _flags(**opts: object) -> list[str]:
    out: list[str] = []
    for k, v in opts.items():
        out += [f"--{k.replace('_', '-')}"] + ([] if v is None else [str(v)])
    return out


@pytest.mark.slow
def test_two_process_sigterm_resume_equals_uninterrupted(tiny_bert_dir: Path,
                                                         tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus.txt", n=400)
    data = make_senteval(tmp_path / "senteval")

    def launch(out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        cmd = _torchrun(2) + [
            "-m", "csekit", "train", "--model", str(tiny_bert_dir), "--train-file", str(corpus),
            "--data-dir", str(data), "--output-dir", str(out), *_flags(**RUN), *extra]
        return subprocess.Popen(cmd, env=env or _env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    ref_out, out = tmp_path / "ref", tmp_path / "run"
    ref = launch(ref_out)
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-3000:]
    ref_state = json.loads(max((ref_out / "checkpoints").iterdir(), key=lambda p: int(p.name.split("-")[1]))
                           .joinpath("trainer_state.json").read_text())
    assert ref_state["step"] >= 6, "early stopping before the signal: nothing to test"

    # Rank 0 pauses 4 s in the middle of writing checkpoint step-4; SIGTERM to every process
    # (as SLURM's --signal=TERM@300 does) during that pause; all agree to stop after step 5.
    part = launch(out, env=_env(**{PAUSE_ENV: "4@4"}))
    ckroot = out / "checkpoints"
    end = time.monotonic() + 240
    while not (ckroot.is_dir() and any(p.name.startswith(".step-4.tmp-")
                                       and (p / "optimizer.pt").exists()
                                       for p in ckroot.iterdir())):
        assert part.poll() is None, part.stderr.read()[-3000:] if part.stderr else ""
        assert time.monotonic() < end
        time.sleep(0.1)
    os.killpg(part.pid, signal.SIGTERM)
    _, err = part.communicate(timeout=240)
    stopped = sorted(int(p.name.split("-")[1]) for p in ckroot.iterdir()
                     if p.name.startswith("step-"))
    assert stopped[-1] == 5, (stopped, err[-3000:])
    state = json.loads((ckroot / "step-5" / "trainer_state.json").read_text())
    assert not state["finished"] and len(torch.load(ckroot / "step-5" / "rng.pt",
                                                     weights_only=True)) == 2

    rest = launch(out, "--resume")
    _, err = rest.communicate(timeout=300)
    assert rest.returncode == 0, err[-3000:]
    final = ref_state["step"]
    a, b = ref_out / "checkpoints" / f"step-{final}", ckroot / f"step-{final}"
    sa = json.loads((a / "trainer_state.json").read_text())
    sb = json.loads((b / "trainer_state.json").read_text())
    for key in ("step", "epoch", "batches_in_epoch", "best_step", "finished",
                "evals_without_improvement"):
        assert sa[key] == sb[key], key
    assert [h["stsb_dev"] for h in sb["history"]] == pytest.approx(
        [h["stsb_dev"] for h in sa["history"]], abs=1e-6)
    assert_same_weights_and_centroids(a, b)

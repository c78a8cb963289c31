"""GPU checks (issue #18), marked ``gpu`` and skipped without CUDA; ``benchmarks/gpu_check.sh``
runs them on a GPU machine. CI never needs them.

- bf16 and fp16 training on CUDA with an interrupted run + ``--resume`` equal to the
  uninterrupted run (deterministic algorithms on; fp16 with its real gradient scaler, whose
  skipped updates are not steps);
- the native inference backend on CUDA equal to transformers (fp32, no TF32);
- the lean training forward and the length-sorted sub-batches on CUDA equal to transformers'
  forward on one batch (float64, dropout 0, embeddings and gradients): half of what decides
  their CUDA defaults (the other half, speed, is benchmarks/gpu_check.py's forward part);
- 2-GPU DDP (torchrun, NCCL) equal to one GPU on the same global batch, when 2 GPUs exist;
- gradient caching (issue #26) on CUDA: the CUDA generator replays the dropout masks (pass 3 ==
  pass 1 exactly, gradients == the one-graph reference), fp16 with the gradient scaler cached
  == uncached (dropout 0), and the mixed-precision resume test with caching.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from test_train import _stop_after, config, make_corpus

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT with a generated WordPiece vocabulary: a GPU machine has no shared
    data or packaged model (this overrides conftest's fixture, which needs them)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from benchmarks._offline_assets import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("gpu-tiny-bert"))


@pytest.fixture(autouse=True)
def _deterministic(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    return make_corpus(tmp_path / "corpus.txt", n=400)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("mini", [None, 4])  # 4: gradient caching (issue #26)
def test_mixed_precision_training_resumes_exactly_on_cuda(tiny_bert_dir: Path, corpus: Path,
                                                          tmp_path: Path, precision: str,
                                                          mini: int | None) -> None:
    from csekit.training import Trainer

    kw = {"precision": precision, "max_steps": 8, "save_steps": 3, "objective": "clusterns",
              "n_clusters": 4, "kmeans_start_cosine": 0.99, "pooler": "cls", "mlp": "train",
              "learning_rate": 1e-3, "mini_batch_size": mini}
    ref_t = Trainer(config(tiny_bert_dir, corpus, tmp_path / "a", **kw))
    assert ref_t.accelerator.device.type == "cuda"
    assert {p.dtype for p in ref_t.encoder.parameters()} == {torch.float32}
    ref = ref_t.train()
    assert ref.steps == 8 and len(ref.losses) == 8
    assert ref_t.scheduler.last_epoch == 8  # skipped fp16 updates are not steps
    if precision == "fp16":
        assert ref_t.accelerator.scaler is not None
        assert (tmp_path / "a" / "checkpoints" / "step-8" / "scaler.pt").is_file()

    t = Trainer(config(tiny_bert_dir, corpus, tmp_path / "b", **kw))
    _stop_after(t, 5, signal.SIGTERM)
    part = t.train()
    assert part.stopped == "interrupted" and part.steps == 5
    rest_t = Trainer(config(tiny_bert_dir, corpus, tmp_path / "b", resume=True, **kw))
    rest = rest_t.train()
    assert rest.steps == 8
    assert rest.losses == pytest.approx(ref.losses[5:], abs=1e-5)
    if precision == "fp16":
        assert rest_t.accelerator.scaler.get_scale() == ref_t.accelerator.scaler.get_scale()
    a, b = tmp_path / "a" / "checkpoints" / "step-8", tmp_path / "b" / "checkpoints" / "step-8"
    ma, mb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert {v.dtype for v in ma.values()} == {torch.float32}
    for k in ma:
        torch.testing.assert_close(mb[k], ma[k], rtol=0, atol=1e-5, msg=k)
    oa = torch.load(a / "objective.pt", weights_only=True)
    ob = torch.load(b / "objective.pt", weights_only=True)
    for k in oa:
        torch.testing.assert_close(ob[k], oa[k], rtol=0, atol=1e-5)


def test_native_encoding_on_cuda_equals_transformers(tiny_bert_dir: Path) -> None:
    from csekit.modeling.encoder import Encoder
    from csekit.precision import exact_fp32

    sents = [f"sentence number {i} about the city and its river" * (1 + i % 3)
             for i in range(64)] + ["", "a", "the cat sat on the mat"]
    for pooler in ("cls_before_pooler", "avg", "avg_first_last"):
        nat = Encoder.from_pretrained(str(tiny_bert_dir), backend="native", pooler=pooler)
        hf = Encoder.from_pretrained(str(tiny_bert_dir), backend="hf", pooler=pooler)
        with exact_fp32():
            a = nat.encode(sents, device="cuda", batch_size=16)
            b = hf.encode(sents, device="cuda", batch_size=16)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert Encoder.from_pretrained(str(tiny_bert_dir), backend="auto").backend == "hf"


@pytest.mark.parametrize("arm", ["hf-sub", "lean", "lean-sub"])
def test_training_forward_arms_equal_on_cuda(tiny_bert_dir: Path, arm: str) -> None:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from benchmarks.gpu_check import _arm_outputs
    from csekit.data import tokenize_pairs
    from csekit.modeling.encoder import Encoder

    enc = Encoder.from_pretrained(str(tiny_bert_dir), pooler="cls", mlp="train", dropout=0.0)
    enc = enc.to("cuda", torch.float64).train()
    enc.subbatch_part_cost = 0  # a real split even for this small batch
    sents = [" ".join(["word"] * (1 + i % 23)) + f" {i}" for i in range(48)]
    inputs = {k: v.cuda() for k, v in tokenize_pairs(enc.tokenizer, sents, 32).items()}
    ref_z, ref_g = _arm_outputs(enc, inputs, "hf", "fp32")
    z, g = _arm_outputs(enc, inputs, arm, "fp32")
    assert (z - ref_z).abs().max() <= 1e-9 * ref_z.abs().max()
    assert (g - ref_g).abs().max() <= 1e-9 * ref_g.abs().max()


def test_gradient_caching_replays_cuda_dropout(tiny_bert_dir: Path) -> None:
    import copy

    from csekit.data import split_views, tokenize_pairs
    from csekit.modeling.encoder import Encoder
    from csekit.objectives import build_objective
    from csekit.training.gradcache import cached_forward_backward, row_slices, slice_rows

    enc = Encoder.from_pretrained(str(tiny_bert_dir), pooler="cls", mlp="train", dropout=0.1)
    enc = enc.to("cuda", torch.float64).train()
    ref = copy.deepcopy(enc)
    sents = [" ".join(["word"] * (1 + i % 13)) + f" {i}" for i in range(24)]
    inputs = {k: v.cuda() for k, v in tokenize_pairs(enc.tokenizer, sents, 32).items()}
    obj = build_objective("simcse")
    seen: list[torch.Tensor] = []

    def model(**kw):  # type: ignore[no-untyped-def]
        z = enc(**kw)
        seen.append(z.detach().clone())
        return z

    torch.manual_seed(3)
    out = cached_forward_backward(model=model, objective=obj, inputs=inputs, mini_batch_size=5,
                                  split=split_views, n_views=2,
                                  backward=lambda loss: loss.backward(),
                                  no_sync=__import__("contextlib").nullcontext, device="cuda")
    k = len(seen) // 2
    assert k == 5 and all(torch.equal(a, b) for a, b in zip(seen[:k], seen[k:]))
    torch.manual_seed(3)
    z = torch.cat([ref(**slice_rows(inputs, r, 48)) for r in row_slices(48, 2, 5)])
    assert torch.equal(z.detach(), torch.cat(seen[:k]))
    ref_loss = obj(*split_views(z)).loss
    ref_loss.backward()
    assert out.loss.item() == pytest.approx(ref_loss.item(), rel=1e-12)
    for (n, p), (_, q) in zip(enc.named_parameters(), ref.named_parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=n)


def test_gradient_caching_fp16_scaler_equals_uncached(tiny_bert_dir: Path,
                                                      tmp_path: Path) -> None:
    """fp16: the scaled loss makes the cached embedding gradients scaled too; after the
    scaler's unscale, an SGD update (which, unlike Adam, shows a gradient off by a factor)
    must be the uncached one's to fp16 rounding (dropout 0), and the loss scale the same."""
    import copy

    from csekit.data import tokenize_pairs
    from csekit.modeling.encoder import Encoder
    from csekit.objectives import build_objective
    from csekit.training import TrainConfig
    from csekit.training.accel import build_accelerator
    from csekit.training.checkpoint import TrainerState
    from csekit.training.optim import raw_optimizer
    from csekit.training.step import UpdateStep

    base = Encoder.from_pretrained(str(tiny_bert_dir), pooler="cls", mlp="train", dropout=0.0)
    sents = [" ".join(["word"] * (1 + i % 13)) + f" {i}" for i in range(32)]
    inputs = tokenize_pairs(base.tokenizer, sents, 32)
    deltas, scales = [], []
    for mini in (None, 4):
        acc = build_accelerator("fp16", [])
        enc = copy.deepcopy(base).to(acc.device).train()
        before = [p.detach().clone() for p in enc.parameters()]
        model, opt = acc.prepare(enc, torch.optim.SGD(enc.parameters(), lr=1.0))
        sched = torch.optim.lr_scheduler.LambdaLR(raw_optimizer(opt), lambda _: 1.0)
        cfg = TrainConfig(objective="simcse", supervision="unsupervised", batch_size=32,
                          mini_batch_size=mini, max_grad_norm=None).resolved()
        step = UpdateStep(config=cfg, accelerator=acc, model=model,
                          objective=build_objective("simcse").to(acc.device), optimizer=opt,
                          scheduler=sched, world=1, output_dir=tmp_path,
                          take=lambda item, state, d=acc.device: {k: v.to(d) for k, v in item.items()})
        _loss, _stats, applied = step.run(iter([inputs]), TrainerState())
        assert applied and acc.scaler is not None
        deltas.append(torch.cat([(p.detach() - b).flatten()
                                 for p, b in zip(enc.parameters(), before)]))
        scales.append(acc.scaler.get_scale())
    assert scales[0] == scales[1]
    assert deltas[0].abs().max() > 0
    torch.testing.assert_close(deltas[1], deltas[0], rtol=2e-2,
                               atol=2e-2 * float(deltas[0].abs().max()))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpu_ddp_equals_one_gpu(tiny_bert_dir: Path, corpus: Path, tmp_path: Path) -> None:
    import socket

    from csekit.training import TrainConfig, Trainer

    opts = {"objective": "clusterns-focal", "n_clusters": 4, "kmeans_start_cosine": 1.0,
                "batch_size": 16, "learning_rate": 3e-5, "max_steps": 5, "dropout": 0.0, "pooler": "cls",
                "mlp": "train", "bml_weight": 1e-2, "logging_steps": 1, "seed": 3, "precision": "fp32",
                "tf32": False}
    one, two = tmp_path / "one", tmp_path / "two"
    Trainer(TrainConfig.from_dict(dict(model=str(tiny_bert_dir), train_file=str(corpus),
                                       output_dir=str(one), progress=False, **opts))).train()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags: list[str] = []
    for k, v in opts.items():
        if isinstance(v, bool):
            flags.append(f"--{'' if v else 'no-'}{k.replace('_', '-')}")
        else:
            flags += [f"--{k.replace('_', '-')}", str(v)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "csekit", "train",
           "--model", str(tiny_bert_dir), "--train-file", str(corpus), "--output-dir", str(two),
           "--no-progress", *flags]
    proc = subprocess.run(cmd, env=dict(os.environ, CI="1"), check=False, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows if "loss" in r] == pytest.approx(
        [r["loss"] for r in ref if "loss" in r], abs=1e-5)
    m1 = load_file(str(one / "checkpoints" / "step-5" / "model.safetensors"))
    m2 = load_file(str(two / "checkpoints" / "step-5" / "model.safetensors"))
    for k in m1:
        torch.testing.assert_close(m2[k], m1[k], rtol=0, atol=1e-5, msg=k)

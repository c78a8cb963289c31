"""Precision of loading and evaluation (issue #18).

- A model STORED in fp16 or bf16 (common on the Hub; transformers 5 loads the stored dtype by
  default) trains with ``--precision bf16`` on the CPU with fp32 parameters, fp32 optimiser
  state and fp32 saved weights: fp32 master weights, autocast on top.
- The native backend computes in the precision asked for, not the stored one; ``auto`` picks
  it on the CPU only.
- Dev evaluation during a bf16 run is done as ``csekit eval`` does it (fp32, outside the
  autocast wrapper): the recorded best score equals ``csekit eval --split dev`` of the saved
  best model (to 0.01).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from csekit.modeling.encoder import Encoder, auto_uses_native
from csekit.training import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from test_train import make_corpus
from test_train_eval import make_senteval

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture(scope="module", params=["fp16", "bf16"])
def stored_low(request: pytest.FixtureRequest, tiny_bert_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The tiny BERT saved with its weights in fp16 / bf16 (as a Hub model may be)."""
    from transformers import AutoTokenizer, BertModel

    dtype = DTYPES[request.param]
    out = tmp_path_factory.mktemp(f"tiny-{request.param}")
    model = BertModel.from_pretrained(str(tiny_bert_dir)).to(dtype)
    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(tiny_bert_dir)).save_pretrained(str(out))
    stored = load_file(str(out / "model.safetensors"))
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {dtype}
    return request.param, out


def test_low_precision_checkpoint_trains_with_fp32_master_weights(
        stored_low: tuple[str, Path], tmp_path: Path) -> None:
    _name, model_dir = stored_low
    corpus = make_corpus(tmp_path / "c.txt", n=100)
    out = tmp_path / "run"
    cfg = TrainConfig.from_dict({
        "model": str(model_dir), "train_file": str(corpus), "output_dir": str(out), "batch_size": 8,
        "learning_rate": 1e-3, "max_steps": 3, "precision": "bf16", "pooler": "cls", "mlp": "train",
        "progress": False, "logging_steps": 1})
    t = Trainer(cfg)
    enc = t.accelerator.unwrap_model(t.model)
    assert {p.dtype for p in enc.parameters()} == {torch.float32}
    res = t.train()
    assert res.steps == 3 and all(torch.isfinite(torch.tensor(res.losses)))
    opt = t.optimizer.optimizer if hasattr(t.optimizer, "optimizer") else t.optimizer
    moments = [v for s in opt.state.values() for k, v in s.items()
               if k in ("exp_avg", "exp_avg_sq")]
    assert moments and {m.dtype for m in moments} == {torch.float32}
    ck = out / "checkpoints" / "step-3"
    assert {v.dtype for v in load_file(str(ck / "model.safetensors")).values()} == {torch.float32}
    saved = torch.load(ck / "optimizer.pt", weights_only=True)["state"]
    assert {v.dtype for s in saved.values() for k, v in s.items()
            if k in ("exp_avg", "exp_avg_sq")} == {torch.float32}
    best = load_file(str(out / "model.safetensors"))
    assert {v.dtype for v in best.values() if v.is_floating_point()} == {torch.float32}


def test_native_backend_computes_in_fp32_whatever_is_stored(
        stored_low: tuple[str, Path]) -> None:
    """Native on an fp16/bf16-stored model: fp32 weights, and embeddings equal to the
    transformers backend (also loaded in fp32) to fp32 rounding."""
    _, model_dir = stored_low
    sents = ["the city was known for its river", "a new album", "one two three four"]
    nat = Encoder.from_pretrained(str(model_dir), backend="native", pooler="avg")
    hf = Encoder.from_pretrained(str(model_dir), backend="hf", pooler="avg")
    assert {p.dtype for p in nat.parameters()} == {torch.float32}
    assert {p.dtype for p in hf.parameters()} == {torch.float32}
    a, b = nat.encode(sents), hf.encode(sents)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # bf16 asked for: computed in bf16 (autocast), so it differs from fp32 beyond rounding
    c = nat.encode(sents, precision="bf16")
    assert not torch.allclose(c, a, atol=1e-5) and torch.allclose(c, a, atol=0.1)


def test_auto_backend_is_native_on_cpu_only(tiny_bert_dir: Path) -> None:
    assert auto_uses_native("cpu") and not auto_uses_native("cuda")
    assert not auto_uses_native(torch.device("cuda", 0))
    assert auto_uses_native(None) == (not torch.cuda.is_available())
    assert Encoder.from_pretrained(str(tiny_bert_dir), backend="auto",
                                   device="cpu").backend == "native"
    assert Encoder.from_pretrained(str(tiny_bert_dir), backend="auto",
                                   device="cuda").backend == "hf"


@pytest.fixture(scope="module")
def loud_bert_dir(bert_mini_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT whose sublayers matter: weights drawn with std 0.3, not 0.02 (with
    0.02 the residual stream dominates and bf16 rounding of the sublayers barely moves the
    embeddings, so the test below could not tell bf16 evaluation from fp32)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("loud-bert")
    tok = AutoTokenizer.from_pretrained(str(bert_mini_dir))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                     initializer_range=0.3)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out


def test_bf16_dev_score_equals_csekit_eval_of_the_best_model(
        loud_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # (the oneDNN CPU fast path of encode bypasses autocast; off, so that encoding under the
    # training's bf16 wrapper really is bf16 here, as it is on a GPU)
    monkeypatch.setenv("CSEKIT_CPU_FASTPATH", "0")
    tiny_bert_dir = loud_bert_dir
    corpus = make_corpus(tmp_path / "c.txt", n=300)
    data = make_senteval(tmp_path / "senteval", n=400)
    out = tmp_path / "run"
    cfg = TrainConfig.from_dict({
        "model": str(tiny_bert_dir), "train_file": str(corpus), "output_dir": str(out),
        "data_dir": str(data), "batch_size": 16, "learning_rate": 1e-3, "max_steps": 4, "eval_steps": 2,
        "precision": "bf16", "pooler": "avg", "mlp": "none", "progress": False, "final_test": False})
    res = Trainer(cfg).train()
    assert res.best_score is not None
    proc = subprocess.run(
        [sys.executable, "-m", "csekit", "eval", str(out), "--data-dir", str(data),
         "--tasks", "STSBenchmark", "--split", "dev", "--output", str(tmp_path / "dev.json")],
        check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads((tmp_path / "dev.json").read_text())
    text = json.dumps(got)
    assert "STSBenchmark" in text
    score = _spearman(got, "STSBenchmark")
    assert score == pytest.approx(res.best_score, abs=0.01)
    meta = json.loads((out / "csekit.json").read_text())
    assert meta["dev"]["stsb_spearman"] == pytest.approx(score, abs=0.01)


def _spearman(result: dict, task: str) -> float:
    if "spearman" in result and task in result["spearman"]:
        value = result["spearman"][task]
        return float(value["all"] if isinstance(value, dict) else value)
    raise AssertionError(f"no spearman for {task} in {result}")

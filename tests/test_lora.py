"""LoRA through peft: only the adapters (and the MLP head) train; the saved model is merged and
equals the adapter model; the adapter saved on request loads in peft; a resumed LoRA run equals
the uninterrupted one; bad settings are one line.

Oracles: the weights before training (frozen ones bit-identical after it); the unmerged
encoder, and peft's own ``PeftModel.from_pretrained`` on the base model, for the merged save;
the uninterrupted run for the resumed one.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from csekit.cli.main import main
from csekit.errors import ConfigError
from csekit.modeling.encoder import Encoder
from csekit.modeling.loading.lora import LoraSettings
from csekit.training import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from test_backbones import SENTS, assert_st_equal
from test_train import _stop_after, make_corpus

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("lora-corpus") / "c.txt", n=64)


def lora_config(model: Path, corpus: Path, out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "model": str(model), "train_file": str(corpus), "output_dir": str(out),
        "batch_size": 8, "learning_rate": 5e-3, "max_steps": 3, "dropout": 0.1,
        "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "progress": False,
        "final_test": False, "logging_steps": 1, "seed": 4}
    base.update(kw)
    return TrainConfig.from_dict(base)


@pytest.mark.parametrize("family,pooler,mlp", [("qwen3", "last", "train"),
                                               ("bert", "cls", "train")])
def test_only_adapters_and_head_train_and_the_merged_save_equals_them(
        families, corpus: Path, tmp_path: Path, family: str, pooler: str, mlp: str) -> None:
    d = families.build(family)
    cfg = lora_config(d, corpus, tmp_path / "o", pooler=pooler, mlp=mlp, lora_save_adapter=True)
    trainer = Trainer(cfg)
    enc = trainer.accelerator.unwrap_model(trainer.model)
    assert enc.lean_reason == ("LoRA adapters" if family == "bert" else enc.lean_reason)
    before = {n: p.detach().clone() for n, p in enc.named_parameters()}
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert any(n.startswith("head.") for n in trainable)
    trainer.train()
    changed = {n for n, p in enc.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable  # every frozen weight is bit-identical
    assert any("lora_B" in n for n in changed) and any(n.startswith("head.") for n in changed)

    # the merged save: a plain model, the same embeddings as the adapter model (eval mode)
    out = tmp_path / "o"
    ours = enc.encode(SENTS)
    merged = Encoder.from_pretrained(out)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged.encode(SENTS), ours, rtol=0, atol=1e-5)
    assert_st_equal(out)
    meta = json.loads((out / "csekit.json").read_text())
    assert meta["lora"]["r"] == 4 and meta["lora"]["adapter"] == "lora_adapter"
    assert "Trained with LoRA (r 4" in (out / "README.md").read_text()

    # the adapter, loaded by peft onto the base model, gives the same token states
    from transformers import AutoModel

    base = AutoModel.from_pretrained(str(d))
    adapted = peft.PeftModel.from_pretrained(base, str(out / "lora_adapter")).eval()
    inp = merged.tokenizer(SENTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        h_peft = adapted(**inp).last_hidden_state
        h_merged = merged.backbone(**inp).last_hidden_state
    mask = inp["attention_mask"].bool()
    torch.testing.assert_close(h_peft[mask], h_merged[mask], rtol=0, atol=1e-5)


def test_a_resumed_lora_run_equals_the_uninterrupted_one(families, corpus: Path,
                                                         tmp_path: Path) -> None:
    d = families.build("qwen3")
    kw = {"pooler": "last", "mlp": "none", "max_steps": 4, "save_steps": 2}
    full = Trainer(lora_config(d, corpus, tmp_path / "full", **kw)).train()
    first = Trainer(lora_config(d, corpus, tmp_path / "part", **kw))
    _stop_after(first, 2, signal.SIGTERM)
    assert first.train().stopped == "interrupted"
    rest = Trainer(lora_config(d, corpus, tmp_path / "part", **kw, resume=True)).train()
    assert rest.steps == 4 and rest.losses == pytest.approx(full.losses[2:], abs=1e-6)
    ckpt = tmp_path / "part" / "checkpoints" / "step-4" / "model.safetensors"
    with safe_open(str(ckpt), framework="pt") as f:  # the adapters only, not the base weights
        keys = list(f.keys())
        assert f.metadata()["tensors"] == "trainable"
    assert keys and all("lora_" in k for k in keys)
    a = Encoder.from_pretrained(tmp_path / "full").encode(SENTS)
    b = Encoder.from_pretrained(tmp_path / "part").encode(SENTS)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_lora_bad_settings_are_one_line(families, corpus: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    qwen = str(families.build("qwen3"))
    base = ["train", "--model", qwen, "--train-file", str(corpus), "--output-dir",
            str(tmp_path / "o"), "--pooler", "last", "--batch-size", "8", "--max-steps", "1",
            "--no-progress", "--dropout", "0.1"]
    cases = [
        (["--lora-r", "4", "--lora-target-modules", "query,value"], "not found"),
        (["--lora-r", "0"], "lora_r"),
        (["--lora-save-adapter"], "need lora_r"),
        (["--lora-r", "4", "--lora-dropout", "1.5"], "lora_dropout"),
    ]
    for flags, needle in cases:
        capsys.readouterr()
        rc = main([*base, *flags])
        err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
        assert rc == 2 and len(err) == 1 and needle in err[0], (flags, err)
    with pytest.raises(ConfigError, match="no default target modules for model type 'mpnet2'"):
        LoraSettings(r=4).targets_for("mpnet2")


def test_bf16_autocast_over_fp32_lora_weights(families, corpus: Path, tmp_path: Path) -> None:
    """bf16 as for every backbone: autocast over fp32 master weights (the adapters included),
    the saved merged model in fp32."""
    cfg = lora_config(families.build("llama"), corpus, tmp_path / "o", pooler="last",
                      mlp="none", precision="bf16", max_steps=2)
    trainer = Trainer(cfg)
    res = trainer.train()
    enc = trainer.accelerator.unwrap_model(trainer.model)
    assert res.steps == 2 and all(torch.isfinite(torch.tensor(res.losses)))
    assert {p.dtype for p in enc.parameters()} == {torch.float32}
    with safe_open(str(tmp_path / "o" / "model.safetensors"), framework="pt") as f:
        names = list(f.keys())
        assert {f.get_tensor(k).dtype for k in names} == {torch.float32}

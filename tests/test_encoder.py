"""Encoder: poolers against SimCSE's definitions (one sentence at a time, no padding), train/eval
MLP semantics, fast encode, atomic save, sentence-transformers round trip, loading errors."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from csekit.errors import ConfigError, ModelLoadError
from csekit.modeling.encoder import HEAD_FILE, Encoder

SENTS = [
    "a man is playing a guitar .",
    "the cat sat on the mat",
    "a man is playing a guitar .",  # duplicate on purpose
    "stocks fell sharply on monday after the announcement of new tariffs on steel and aluminium",
    "hi",
    "",
    "the quick brown fox jumps over the lazy dog while the farmer watches from the porch",
]
EVAL_POOLERS = ["cls", "cls_before_pooler", "avg", "avg_first_last", "avg_top2"]


def oracle(backbone: torch.nn.Module, tok, sentence: str, pooler: str) -> torch.Tensor:
    """SimCSE's evaluation.py pooling of ONE sentence (no padding at all)."""
    batch = tok([sentence], return_tensors="pt")
    with torch.no_grad():
        out = backbone(**batch, output_hidden_states=True, return_dict=True)
    last, hs = out.last_hidden_state[0], out.hidden_states
    if pooler == "cls":
        return out.pooler_output[0]
    if pooler == "cls_before_pooler":
        return last[0]
    if pooler == "avg":
        return last.mean(0)
    if pooler == "avg_first_last":
        return ((hs[1][0] + hs[-1][0]) / 2.0).mean(0)
    if pooler == "avg_top2":
        return ((hs[-2][0] + hs[-1][0]) / 2.0).mean(0)
    raise AssertionError(pooler)


@pytest.fixture(scope="module")
def enc_factory(tiny_bert_dir: Path):
    def make(**kw) -> Encoder:
        torch.manual_seed(1)
        return Encoder.from_pretrained(str(tiny_bert_dir), **kw)
    return make


@pytest.mark.parametrize("pooler", EVAL_POOLERS)
def test_encode_matches_simcse_pooler_definition(enc_factory, pooler: str) -> None:
    enc = enc_factory(pooler=pooler, mlp="none")
    got = enc.encode(SENTS, batch_size=3)  # several batches of mixed lengths, with padding
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert got.shape == (len(SENTS), enc.hidden_size)
    for i, s in enumerate(SENTS):
        want = oracle(enc.backbone, enc.tokenizer, s, pooler)
        torch.testing.assert_close(got[i], want, atol=2e-5, rtol=1e-4)
    assert torch.equal(got[0], got[2])


def test_encode_token_budget_and_order(enc_factory) -> None:
    enc = enc_factory(pooler="avg", mlp="none")
    ref = enc.encode(SENTS, batch_size=64)
    small = enc.encode(SENTS, batch_size=64, max_tokens=8)  # forces ~1 sentence per batch
    torch.testing.assert_close(ref, small, atol=2e-5, rtol=1e-4)
    rev = enc.encode(SENTS[::-1], batch_size=2)
    torch.testing.assert_close(rev, ref.flip(0), atol=2e-5, rtol=1e-4)
    assert enc.encode([]).shape == (0, enc.hidden_size)
    normed = enc.encode(SENTS, normalize=True)
    torch.testing.assert_close(normed.norm(dim=-1), torch.ones(len(SENTS)))


@pytest.mark.parametrize("max_padding", [0.0, 0.1, 0.5, float("inf")])
def test_plan_batches_limits(max_padding: float) -> None:
    """Every index once, longest first; each batch within the sentence, token and padding
    bounds; and each batch as large as the bounds allow (checked by trying one more)."""
    import numpy as np

    from csekit.modeling.speed.batching import plan_batches

    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(3, 90, 300), [400, 1, 7, 7, 7]])
    batches = plan_batches(lengths, 16, 512, max_padding)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert (np.diff(lengths[flat]) <= 0).all()

    def fits(idx: np.ndarray) -> bool:
        width, real = int(lengths[idx].max()), int(lengths[idx].sum())
        return (len(idx) <= 16 and len(idx) * width <= 512
                and len(idx) * width <= (1 + max_padding) * real)

    pos = 0
    for b in batches:
        assert len(b) == 1 or fits(b)
        pos += len(b)
        if pos < len(flat):
            assert not fits(flat[pos - len(b):pos + 1]), "batch closed early"
    if max_padding == 0.0:
        assert all(len(set(lengths[b].tolist())) == 1 for b in batches)


def test_stable_shapes_plan() -> None:
    """Row counts from {2^k, 3 * 2^k} (brute force), every index once, longest first, within
    the bounds; and so few distinct shapes that streaming chunks stop bringing new ones."""
    import numpy as np

    from csekit.modeling.speed.batching import plan_batches, stable_rows

    allowed = sorted({m * 2 ** k for m in (1, 3) for k in range(12)})
    for n in range(1, 700):
        assert stable_rows(n) == max(a for a in allowed if a <= n)
    rng = np.random.default_rng(1)
    shapes: set[tuple[int, int]] = set()
    free: set[tuple[int, int]] = set()
    for chunk in range(20):
        lengths = rng.integers(3, 33, 2000)
        free |= {(len(b), int(lengths[b].max())) for b in plan_batches(lengths, 128, 4096, 0.1)}
        batches = plan_batches(lengths, 128, 128 * 32, 0.1, stable_shapes=True)
        flat = np.concatenate(batches)
        assert sorted(flat.tolist()) == list(range(len(lengths)))
        assert (np.diff(lengths[flat]) <= 0).all()
        for b in batches:
            width = int(lengths[b].max())
            assert len(b) in allowed and len(b) <= 128
            assert len(b) == 1 or len(b) * width <= 1.1 * int(lengths[b].sum())
            shapes.add((len(b), width))
    rows = {s[0] for s in shapes}
    assert rows <= set(allowed) and len(rows) <= 14
    assert len({s[0] for s in free}) > 3 * len(rows)  # what the free plan does over 20 chunks


def test_encode_truncation_and_precision(enc_factory) -> None:
    enc = enc_factory(pooler="cls_before_pooler", mlp="none")
    long = " ".join(["word"] * 500)
    out = enc.encode([long], max_seq_len=16)
    want = oracle(enc.backbone, enc.tokenizer, " ".join(["word"] * 14), "cls_before_pooler")
    torch.testing.assert_close(out[0], want, atol=2e-5, rtol=1e-4)
    bf = enc.encode(SENTS, precision="bf16")
    fp = enc.encode(SENTS)
    assert bf.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(bf, fp)
    assert cos.min() > 0.97
    with pytest.raises(ConfigError):
        enc.encode(SENTS, precision="fp16")  # fp16 needs a GPU
    with pytest.raises(ConfigError):
        enc.encode("one string")
    with pytest.raises(ConfigError):
        enc.encode(SENTS, precision="int8")


def test_mlp_train_only_semantics(enc_factory) -> None:
    enc = enc_factory(pooler="cls", mlp="train")
    assert enc.eval_pooler == "cls_before_pooler" and enc.head is not None
    batch = enc.tokenize(SENTS[:2])
    enc.eval()
    with torch.no_grad():
        cls_tok = enc.backbone(**batch).last_hidden_state[:, 0]
        ev = enc(**batch)
        enc.train()
        torch.manual_seed(0)
        tr = enc(**batch)
        torch.manual_seed(0)
        tr_ref = enc.head(enc.backbone(**batch).last_hidden_state[:, 0])
    torch.testing.assert_close(ev, cls_tok)
    torch.testing.assert_close(tr, tr_ref)
    enc.eval()
    always = Encoder(enc.backbone, enc.tokenizer, pooler="cls", mlp="always", head=enc.head)
    with torch.no_grad():
        torch.testing.assert_close(always(**batch), enc.head(cls_tok))


def test_train_mode_has_dropout_and_gradients(enc_factory) -> None:
    enc = enc_factory(pooler="cls", mlp="train", dropout=0.3)
    assert enc.backbone.config.hidden_dropout_prob == 0.3
    enc.train()
    batch = enc.tokenize(SENTS[:3])
    z1, z2 = enc(**batch), enc(**batch)
    assert not torch.allclose(z1, z2)  # two dropout masks
    (z1 * z2).sum().backward()
    assert enc.head.dense.weight.grad is not None


def _st_model(path: Path):
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(path), device="cpu")


@pytest.mark.parametrize("pooler,mlp", [
    ("cls", "train"), ("cls", "always"), ("cls", "none"), ("avg", "none"),
    ("avg_first_last", "none"), ("avg_top2", "train"), ("avg", "always"),
])
def test_saved_folder_loads_in_sentence_transformers(enc_factory, tmp_path: Path, pooler: str,
                                                     mlp: str) -> None:
    enc = enc_factory(pooler=pooler, mlp=mlp)
    ref = enc.encode(SENTS)
    enc.save(tmp_path / "model", metadata={"objective": {"name": "simcse"}})
    st = _st_model(tmp_path / "model")
    got = st.encode(SENTS, convert_to_tensor=True, batch_size=3).cpu()
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
    again = Encoder.from_pretrained(tmp_path / "model")
    assert (again.pooler, again.mlp) == (pooler, mlp)
    torch.testing.assert_close(again.encode(SENTS), ref, atol=1e-6, rtol=1e-6)
    meta = json.loads((tmp_path / "model" / "csekit.json").read_text())
    assert meta["objective"] == {"name": "simcse"} and meta["pooler"] == pooler
    assert {"torch", "transformers", "csekit"} <= set(meta["versions"])
    if mlp != "none":  # the head is saved so training can resume
        assert (tmp_path / "model" / HEAD_FILE).is_file()
        torch.testing.assert_close(again.head.dense.weight, enc.head.dense.weight)


def test_explicit_cls_uses_saved_head(enc_factory, tmp_path: Path) -> None:
    enc = enc_factory(pooler="cls", mlp="train")
    enc.save(tmp_path / "m")
    loaded = Encoder.from_pretrained(tmp_path / "m", pooler="cls")
    assert loaded.mlp == "always"
    batch = enc.tokenize(SENTS[:2])
    with torch.no_grad():
        want = enc.head(enc.backbone(**batch).last_hidden_state[:, 0])
    torch.testing.assert_close(loaded.encode(SENTS[:2]), want, atol=2e-5, rtol=1e-4)
    assert Encoder.from_pretrained(tmp_path / "m", pooler="avg").eval_pooler == "avg"


def test_save_is_atomic(enc_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    enc = enc_factory(pooler="avg", mlp="none")
    dest = tmp_path / "best"
    enc.save(dest, metadata={"round": 1})
    enc.save(dest, metadata={"round": 2})  # replace an existing folder
    assert json.loads((dest / "csekit.json").read_text())["round"] == 2

    import csekit.modeling.saved.folder as folder_mod

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(folder_mod, "write_st_modules", boom)
    with pytest.raises(OSError):
        enc.save(dest, metadata={"round": 3})
    assert json.loads((dest / "csekit.json").read_text())["round"] == 2  # old folder intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no temp folder left
    Encoder.from_pretrained(dest)


def _copy_without(src: Path, dst: Path, drop: set[str]) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in drop:
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_model_folder_errors(tiny_bert_dir: Path, tmp_path: Path) -> None:
    no_w = _copy_without(tiny_bert_dir, tmp_path / "now", {"model.safetensors"})
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        Encoder.from_pretrained(no_w)
    pickled = _copy_without(tiny_bert_dir, tmp_path / "pkl", {"model.safetensors"})
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="safetensors only"):
        Encoder.from_pretrained(pickled)
    no_tok = _copy_without(tiny_bert_dir, tmp_path / "notok",
                           {"tokenizer.json", "vocab.txt", "tokenizer_config.json",
                            "special_tokens_map.json"})
    with pytest.raises(ModelLoadError, match="tokenizer"):
        Encoder.from_pretrained(no_tok)
    with pytest.raises(ModelLoadError, match="does not exist"):
        Encoder.from_pretrained(tmp_path / "missing")
    with pytest.raises(ConfigError):
        Encoder.from_pretrained(tiny_bert_dir, pooler="max")


def test_offline_hub_id_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError) as err:
        Encoder.from_pretrained("some-org/model-that-is-not-cached-xyz")
    assert time.monotonic() - t0 < 10
    msg = str(err.value)
    assert "offline" in msg and "\n" not in msg


def test_cls_without_trained_pooler(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig.from_pretrained(tiny_bert_dir)
    mlm = tmp_path / "mlm"
    BertForMaskedLM(cfg).save_pretrained(mlm)  # an MLM checkpoint has no pooler weights
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        if (tiny_bert_dir / f).is_file():
            (mlm / f).write_bytes((tiny_bert_dir / f).read_bytes())
    enc = Encoder.from_pretrained(mlm)
    assert enc.pooler == "cls_before_pooler"  # default avoids the random pooler
    with pytest.raises(ConfigError, match="cls_before_pooler"):
        Encoder.from_pretrained(mlm, pooler="cls", mlp="none")


def test_unsupported_st_module(enc_factory, tmp_path: Path) -> None:
    enc = enc_factory(pooler="avg", mlp="none")
    enc.save(tmp_path / "m")
    modules = json.loads((tmp_path / "m" / "modules.json").read_text())
    modules.append({"idx": 9, "name": "9", "path": "9_X", "type": "my_pkg.Evil"})
    (tmp_path / "m" / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "m" / "csekit.json").unlink()
    with pytest.raises(ModelLoadError, match="not supported"):
        Encoder.from_pretrained(tmp_path / "m")


def test_cli_encode(enc_factory, tiny_bert_dir: Path, tmp_path: Path, capsys) -> None:
    import numpy as np

    from csekit.cli.main import main

    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(SENTS) + "\n", encoding="utf-8")
    out = tmp_path / "emb.npy"
    # SENTS[5] is empty: an error naming the line (#13), or skipped and counted
    argv = ["encode", str(tiny_bert_dir), "--input", str(inp), "--output", str(out),
            "--pooler", "avg"]
    assert main(argv) == 2
    assert f"{inp}:6: empty line" in capsys.readouterr().err
    assert main(argv + ["--on-bad-line", "skip", "--chunk-size", "2"]) == 0
    assert "skipped 1 bad rows" in capsys.readouterr().out
    arr = np.load(out)
    kept = [s for s in SENTS if s]
    ref = enc_factory(pooler="avg", mlp="none").encode(kept)
    assert arr.shape == (len(kept), ref.shape[1])
    np.testing.assert_allclose(arr, ref.numpy(), atol=1e-6)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\xfe bad\n")
    assert main(["encode", str(tiny_bert_dir), "--input", str(bad), "--output", str(out)]) == 2



def test_cpu_fastpath_is_exact_and_temporary(enc_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    from csekit.modeling.native.cpu_fastpath import fastpath_available

    enc = enc_factory(pooler="avg", mlp="train")
    monkeypatch.setenv("CSEKIT_CPU_FASTPATH", "0")
    plain = enc.encode(SENTS)
    monkeypatch.setenv("CSEKIT_CPU_FASTPATH", "1")
    fast = enc.encode(SENTS)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-4)
    if not fastpath_available():
        pytest.skip("oneDNN fused linear not available in this torch build")
    for mod in enc.modules():  # the patch is gone after encode()
        assert "forward" not in mod.__dict__
        act = getattr(mod, "intermediate_act_fn", None)
        assert act is None or type(act).__name__ == "GELUActivation"


def test_any_automodel_encoder_distilbert(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """A backbone without a pooler and without token type ids (DistilBERT)."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    cfg = DistilBertConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2,
                           hidden_dim=64, max_position_embeddings=128)
    torch.manual_seed(0)
    src = tmp_path / "distil"
    DistilBertModel(cfg).save_pretrained(src)
    tok.save_pretrained(src)
    enc = Encoder.from_pretrained(src)
    assert enc.pooler == "cls_before_pooler"
    with pytest.raises(ConfigError, match="has none"):
        Encoder.from_pretrained(src, pooler="cls", mlp="none")
    train = Encoder.from_pretrained(src, pooler="cls", mlp="train")
    train.train()
    assert train(**train.tokenize(SENTS[:2])).shape == (2, 32)
    avg = Encoder.from_pretrained(src, pooler="avg_top2")
    got = avg.encode(SENTS)
    for i, s in enumerate(SENTS):
        batch = tok([s], return_tensors="pt", return_token_type_ids=False)
        with torch.no_grad():
            hs = avg.backbone(**batch, output_hidden_states=True).hidden_states
        torch.testing.assert_close(got[i], ((hs[-2][0] + hs[-1][0]) / 2).mean(0),
                                   atol=2e-5, rtol=1e-4)
    avg.save(tmp_path / "saved")
    st = _st_model(tmp_path / "saved")
    torch.testing.assert_close(st.encode(SENTS, convert_to_tensor=True).cpu(), got,
                               atol=2e-5, rtol=1e-4)


def test_sigkill_during_save_keeps_previous_model(enc_factory, tiny_bert_dir: Path,
                                                  tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    enc = enc_factory(pooler="avg", mlp="none")
    dest = tmp_path / "best"
    enc.save(dest, metadata={"round": 1})
    ready = tmp_path / "ready"
    script = f"""
import time, pathlib
import csekit.modeling.saved.folder as m
real = m.write_st_modules
def slow(*a, **k):
    real(*a, **k)
    pathlib.Path({str(ready)!r}).touch()
    time.sleep(120)
m.write_st_modules = slow
from csekit.modeling.encoder import Encoder
e = Encoder.from_pretrained({str(tiny_bert_dir)!r}, pooler="avg", mlp="none")
e.save({str(dest)!r}, metadata={{"round": 2}})
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, "the saving process died early"
            assert time.monotonic() < deadline
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of the save
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert json.loads((dest / "csekit.json").read_text())["round"] == 1
    torch.testing.assert_close(Encoder.from_pretrained(dest).encode(SENTS), enc.encode(SENTS))
    assert any(p.name.startswith(".best.tmp-") for p in tmp_path.iterdir())  # the killed writer's
    enc.save(dest, metadata={"round": 3})  # the next save cleans it up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "ready"]

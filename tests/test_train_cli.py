"""`csekit train` on the command line: flags override the recipe; bad input -> exit 2, one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from csekit.cli.main import main
from csekit.errors import ConfigError
from csekit.training import TrainConfig

sys.path.insert(0, str(Path(__file__).parent))
from test_train import make_corpus


def is_one_line_error(rc: int, err: str, needle: str) -> bool:
    """The bad-input contract: exit 2, one line ``csekit: error: ...`` naming ``needle``, no
    traceback."""
    lines = [x for x in err.splitlines() if x.strip()]
    return (rc == 2 and len(lines) == 1 and lines[0].startswith("csekit: error:")
            and needle in lines[0] and "Traceback" not in err)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(["train", *argv])
    err = capsys.readouterr().err.strip()
    return rc, err


def test_flags_override_config_and_train(tiny_bert_dir: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    corpus = make_corpus(tmp_path / "c.txt", n=100)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tiny_bert_dir}\ntrain_file: {corpus}\nbatch_size: 8\n"
                      f"learning_rate: 1.0e-4\nmax_steps: 50\nobjective: focal\nmargin: 0.2\n"
                      f"pooler: avg\nmlp: none\nprogress: false\n")
    out = tmp_path / "out"
    rc = main(["train", "--config", str(recipe), "--max-steps", "3", "--learning-rate", "2e-4",
               "--output-dir", str(out), "--no-final-test"])
    assert rc == 0
    cfg = TrainConfig.from_yaml(out / "config.yaml")
    assert (cfg.max_steps, cfg.learning_rate, cfg.margin, cfg.batch_size) == (3, 2e-4, 0.2, 8)
    assert cfg.objective == "focal"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r][-1] == 3
    assert "completed after 3 steps" in capsys.readouterr().out


def _bad_cases(tmp: Path, tiny: Path) -> list[tuple[str, list[str], str]]:
    good = make_corpus(tmp / "good.txt", n=64)
    empty = tmp / "empty.txt"
    empty.write_text("")
    blank = tmp / "blank.txt"
    blank.write_text("\n  \n\n")
    small = make_corpus(tmp / "small.txt", n=5)
    badutf = tmp / "bad.txt"
    badutf.write_bytes(b"fine line\nbad \xff\xfe line\n")
    nul = tmp / "nul.txt"
    nul.write_bytes(b"one\nt\x00wo\n")
    yaml_bad = tmp / "bad.yaml"
    yaml_bad.write_text("model: [unclosed\n")
    yaml_unknown = tmp / "unknown.yaml"
    yaml_unknown.write_text("learning_rat: 1e-5\n")
    yaml_type = tmp / "type.yaml"
    yaml_type.write_text("batch_size: lots\n")
    no_weights = tmp / "noweights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((tiny / "config.json").read_text())
    nosts = tmp / "nosts"
    nosts.mkdir()
    ckout = tmp / "ckout"
    (ckout / "checkpoints" / "step-2").mkdir(parents=True)
    (ckout / "checkpoints" / "step-2" / "trainer_state.json").write_text("{}")
    m, t = ["--model", str(tiny)], ["--train-file", str(good)]
    o = ["--output-dir", str(tmp / "o")]
    return [
        ("missing train file", m + ["--train-file", str(tmp / "nope.txt")] + o, "nope.txt"),
        ("no train file", m + o, "--train-file"),
        ("empty corpus", m + ["--train-file", str(empty)] + o, "empty.txt"),
        ("blank corpus", m + ["--train-file", str(blank)] + o, "blank.txt"),
        ("smaller than a batch", m + ["--train-file", str(small)] + o, "batch"),
        ("invalid utf-8", m + ["--train-file", str(badutf)] + o, "bad.txt:2"),
        ("NUL byte", m + ["--train-file", str(nul)] + o, "nul.txt:2"),
        ("n_clusters > batch", m + t + o + ["--objective", "clusterns", "--batch-size", "32"],
         "n_clusters 128"),
        ("warm-up twice", m + t + o + ["--warmup-steps", "5", "--warmup-ratio", "0.1"],
         "warmup"),
        ("patience without data", m + t + o + ["--patience", "3"], "--data-dir"),
        ("patience without evaluation", m + t + o + ["--patience", "3", "--data-dir",
                                                     str(nosts), "--eval-steps", "0"],
         "--eval-steps 0"),
        ("eval at start without evaluation", m + t + o + ["--eval-at-start", "--eval-steps",
                                                          "0"], "eval_at_start"),
        ("negative eval steps", m + t + o + ["--eval-steps", "-1"], "eval_steps"),
        ("fp16 on CPU", m + t + o + ["--precision", "fp16"], "fp16"),
        ("batch 1", m + t + o + ["--batch-size", "1"], "batch_size"),
        ("zero lr", m + t + o + ["--learning-rate", "0"], "learning_rate"),
        ("negative temperature", m + t + o + ["--temperature", "-1"], "temperature"),
        ("dropout 1", m + t + o + ["--dropout", "1.0"], "dropout"),
        ("kmeans_lr 0", m + t + o + ["--objective", "clusterns", "--n-clusters", "4",
                                     "--kmeans-lr", "0"], "kmeans_lr"),
        ("focal margin 1", m + t + o + ["--objective", "focal", "--margin", "1.5"], "margin"),
        ("bad yaml", ["--config", str(yaml_bad)], "bad.yaml line"),
        ("unknown yaml key", ["--config", str(yaml_unknown)], "learning_rat"),
        ("wrong yaml type", ["--config", str(yaml_type)], "batch_size"),
        ("missing config", ["--config", str(tmp / "none.yaml")], "none.yaml"),
        ("model folder without weights", ["--model", str(no_weights)] + t + o, "noweights"),
        ("hub id while offline", ["--model", "bert-base-uncased"] + t + o, "bert-base-uncased"),
        ("model folder missing", ["--model", str(tmp / "nomodel")] + t + o, "nomodel"),
        ("data dir without STS", m + t + o + ["--data-dir", str(nosts)], "nosts"),
        ("checkpoints without resume", m + t + ["--output-dir", str(ckout)], "--resume"),
    ]


def test_bad_input_matrix_exit_2_one_line(tiny_bert_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    failures = []
    for name, argv, needle in _bad_cases(tmp_path, tiny_bert_dir):
        rc, err = run_cli(argv, capsys)
        if not is_one_line_error(rc, err, needle):
            failures.append(f"{name}: rc={rc} err={err[-300:]!r}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("argv", [["--objective", "nope"], ["--precision", "fp8"],
                                  ["--batch-size", "x"]])
def test_argparse_rejects_bad_values(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", *argv])
    assert exc.value.code == 2


def test_batch_not_divisible_by_processes() -> None:
    cfg = TrainConfig(train_file="x", batch_size=64)
    cfg.validate(world_size=4)
    with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
        cfg.validate(world_size=3)


# Published BERT-base settings, restated from REFERENCE.md (not imported from the table).
_PUBLISHED_BERT_BASE = {
    "simcse": {"batch_size": 64, "learning_rate": 3e-5, "temperature": 0.05},
    "clusterns": {"batch_size": 256, "learning_rate": 5e-5, "n_clusters": 128, "kmeans_lr": 1e-3,
                      "kmeans_start_cosine": 0.4, "bml_weight": 1e-3, "bml_alpha": 0.0, "bml_beta": 0.3},
    "focal": {"margin": 0.3, "temperature": 0.05},
}


@pytest.mark.parametrize("objective", sorted(_PUBLISHED_BERT_BASE))
def test_choosing_an_objective_applies_its_published_defaults(objective: str) -> None:
    cfg = TrainConfig(train_file="x").override(objective=objective).resolved()
    for key, value in _PUBLISHED_BERT_BASE[objective].items():
        assert getattr(cfg, key) == pytest.approx(value), key
    cfg.validate()  # k = 128 fits ClusterNS's own batch of 256: no exit 2 any more


def test_given_options_win_over_the_objective_defaults(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("objective: clusterns\nbatch_size: 32\nn_clusters: 16\n")
    cfg = TrainConfig.from_yaml(recipe).override(learning_rate=1e-4)
    assert cfg.defaulted_options()["bml_weight"] == 1e-3
    res = cfg.resolved()
    assert (res.batch_size, res.n_clusters, res.learning_rate, res.bml_beta) == (32, 16, 1e-4, 0.3)
    summary = cfg.effective_summary()
    assert "batch_size=32," in summary and "bml_weight=0.001*" in summary
    # a resolved config keeps its values when resolved again
    assert res.resolved() == res


def test_clusterns_with_only_model_corpus_and_output_runs(tiny_bert_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """The new user's first try: no batch or k given. ClusterNS's defaults (batch 256, k 128)
    apply; one step runs and the effective settings are logged and saved."""
    import logging

    import yaml

    corpus = make_corpus(tmp_path / "c.txt", n=300)
    out = tmp_path / "o"
    with caplog.at_level(logging.INFO, logger="csekit"):
        rc, err = run_cli(["--model", str(tiny_bert_dir), "--train-file", str(corpus),
                           "--output-dir", str(out), "--objective", "clusterns",
                           "--max-steps", "1", "--no-progress", "--pooler", "avg",
                           "--mlp", "none"], capsys)
    assert rc == 0, err
    assert any("effective settings" in r.message and "batch_size=256*" in r.message
               and "n_clusters=128*" in r.message for r in caplog.records)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["batch_size"], saved["n_clusters"], saved["bml_weight"]) == (256, 128, 1e-3)


def test_eval_steps_0_trains_without_dev_evaluation(tiny_bert_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """--eval-steps 0 (issue #28): no STS-B dev evaluation, even with --data-dir (whose test
    files still give the final test); the model at the root is the last one: the weights of
    the final checkpoint. --help says so."""
    from safetensors.torch import load_file

    sys.path.insert(0, str(Path(__file__).parent))
    from test_train_eval import make_senteval

    corpus = make_corpus(tmp_path / "c.txt", n=100)
    data = make_senteval(tmp_path / "senteval")
    (data / "downstream" / "STS" / "STSBenchmark" / "sts-dev.csv").unlink()  # not needed
    out = tmp_path / "out"
    rc = main(["train", "--model", str(tiny_bert_dir), "--train-file", str(corpus),
               "--output-dir", str(out), "--batch-size", "8", "--max-steps", "4",
               "--eval-steps", "0", "--data-dir", str(data), "--pooler", "avg", "--mlp",
               "none", "--no-progress", "--save-steps", "2"])
    assert rc == 0, capsys.readouterr().err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and not any(k.startswith("eval/") for r in rows for k in r)
    last = load_file(str(out / "checkpoints" / "step-4" / "model.safetensors"))
    # (transformers 5.0's save_pretrained writes LayerNorm weights under their legacy names
    # gamma / beta, which every loader maps back; 5.25 keeps weight / bias)
    legacy = {".gamma": ".weight", ".beta": ".bias"}
    root = {next((k[: -len(a)] + b for a, b in legacy.items() if k.endswith(a)), k): v
            for k, v in load_file(str(out / "model.safetensors")).items()}
    # (the checkpoint holds the Encoder's parameters as backbone.<name>; the unused BERT
    # pooler, kept out of training, is only in the saved folder)
    shared = [k for k in root if f"backbone.{k}" in last]
    assert len(shared) > 10, sorted(root)
    assert all(k.startswith("pooler.") for k in set(root) - set(shared)), (sorted(set(root) - set(shared)), sorted(last))
    for k in shared:
        assert torch.equal(root[k], last[f"backbone.{k}"]), k
    results = json.loads((out / "results.json").read_text())
    assert results["test"]["spearman"] and results["steps"] == 4
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "0: no dev evaluation" in text and "the best model is then the last one" in text


def test_an_error_under_the_progress_bar_is_a_line_of_its_own(
        tiny_bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The progress bar redraws its line with a carriage return; an error printed while it is
    open used to land on the bar's line. It is closed first now (issue #28)."""
    from csekit.training.step import UpdateStep

    monkeypatch.delenv("CI", raising=False)
    real = UpdateStep.forward_backward
    calls = [0]

    def nan_on_third(self, inputs, scale):  # type: ignore[no-untyped-def]
        out = real(self, inputs, scale)
        calls[0] += 1
        if calls[0] == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(UpdateStep, "forward_backward", nan_on_third)
    corpus = make_corpus(tmp_path / "c.txt", n=100)
    rc = main(["train", "--model", str(tiny_bert_dir), "--train-file", str(corpus),
               "--output-dir", str(tmp_path / "o"), "--batch-size", "8", "--max-steps", "6",
               "--pooler", "avg", "--mlp", "none", "--progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "step" in err  # the bar was drawn
    lines = [x for x in err.split("\n") if "csekit: error:" in x]
    assert len(lines) == 1 and lines[0].startswith("csekit: error: non-finite loss"), lines

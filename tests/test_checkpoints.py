"""Checkpoint cadence, contents and failures (issue #18).

- A full checkpoint every ``save_steps`` (independent of ``eval_steps``), at the end and on a
  signal; an improving evaluation writes the best model only; the final test rewrites only
  the results and the model's metadata, not its weights.
- The fp16 gradient scaler's state is saved and restored (exact resume), and an update the
  scaler skips does not count as a step (step counter and schedule agree). A real
  ``torch.amp.GradScaler`` runs on the CPU here, put where Accelerate puts it for fp16.
- A full disk during a save is one ``csekit: error:`` line with exit 2 naming the lack of
  space, the bytes needed and the last good checkpoint; the previous checkpoint survives. An
  unreadable checkpoint on ``--resume`` is one line too.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from csekit.cli.main import main
from csekit.errors import CheckpointError
from csekit.training import TrainConfig, Trainer
from csekit.training import checkpoint as ckpt_mod

sys.path.insert(0, str(Path(__file__).parent))
from test_train import _stop_after, config, make_corpus
from test_train_eval import make_senteval


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    return make_corpus(tmp_path / "corpus.txt", n=300)


def _ckpts(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").iterdir()
                  if p.name.startswith("step-"))


def test_cadence_save_steps_independent_of_eval_steps(tiny_bert_dir: Path, corpus: Path,
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_senteval(tmp_path / "senteval")
    out = tmp_path / "run"
    saves: list[int] = []
    real = ckpt_mod.save_checkpoint

    def counting(path, **kw):  # type: ignore[no-untyped-def]
        saves.append(kw["state"].step)
        return real(path, **kw)

    import csekit.training.run_checkpoints as run_ckpt_mod
    monkeypatch.setattr(run_ckpt_mod, "save_checkpoint", counting)
    cfg = config(tiny_bert_dir, corpus, out, max_steps=7, eval_steps=2, save_steps=3,
                 save_total_limit=10, data_dir=str(data), learning_rate=1e-3)
    keeper_saves: list[int] = []
    t = Trainer(cfg)
    real_keep = t.keeper.save

    def keep(enc, state, *, score):  # type: ignore[no-untyped-def]
        keeper_saves.append(state.step)
        return real_keep(enc, state, score=score)

    t.keeper.save = keep  # type: ignore[method-assign]
    final = {}
    real_final = t.keeper.final_test

    def final_test(state):  # type: ignore[no-untyped-def]
        weights = out / "model.safetensors"
        before = (weights.stat().st_ino, weights.stat().st_mtime_ns, weights.read_bytes())
        res = real_final(state)
        after = (weights.stat().st_ino, weights.stat().st_mtime_ns, weights.read_bytes())
        final["unchanged"] = before == after
        return res

    t.keeper.final_test = final_test  # type: ignore[method-assign]
    res = t.train()
    assert res.stopped == "completed" and res.steps == 7
    assert saves == [3, 6, 7] and _ckpts(out) == [3, 6, 7]  # not at the evaluations 2, 4
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["eval/stsb_dev_spearman"]) for r in rows
             if "eval/stsb_dev_spearman" in r]
    assert [s for s, _ in evals] == [2, 4, 6, 7]
    improving, best = [], -1e9
    for s, v in evals:
        if v > best:
            improving.append(s)
            best = v
    assert keeper_saves == improving  # the best model, at improving evaluations only
    meta = json.loads((out / "csekit.json").read_text())
    assert meta["dev"]["step"] == res.best_step and "STSBenchmark" in json.dumps(meta["test"])
    assert final["unchanged"]  # the final test did not rewrite the weights
    assert json.loads((out / "results.json").read_text())["best_step"] == res.best_step


def test_default_save_steps_is_1000() -> None:
    assert TrainConfig().save_steps == 1000


def _inject_scaler(t: Trainer, init_scale: float) -> torch.amp.GradScaler:
    """A real GradScaler where Accelerate keeps it in an fp16 run (accelerator.scaler, the
    prepared optimizer's scaler and its patched step), so the fp16 path runs on the CPU."""
    from accelerate.optimizer import patch_optimizer_step

    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=3)
    opt = t.optimizer
    opt.scaler = scaler
    opt._accelerate_step_called = False
    opt._optimizer_original_step_method = opt.optimizer.step
    opt._optimizer_patched_step_method = patch_optimizer_step(opt, opt.optimizer.step)
    t.accelerator.scaler = scaler
    return scaler


SCALER_KW = {"max_steps": 7, "save_steps": 3, "max_grad_norm": 0.0, "objective": "clusterns",
                 "n_clusters": 4, "kmeans_start_cosine": 0.99, "learning_rate": 1e-3}


def test_scaler_skips_are_not_steps_and_its_state_resumes_exactly(tiny_bert_dir: Path,
                                                                   corpus: Path,
                                                                   tmp_path: Path) -> None:
    # init scale 3e38: the scaled loss overflows fp32 until the scale has backed off a few
    # times; those updates are skipped by the scaler.
    ref_t = Trainer(config(tiny_bert_dir, corpus, tmp_path / "a", **SCALER_KW))
    scaler = _inject_scaler(ref_t, 3e38)
    ref = ref_t.train()
    skipped = ref_t.state.skipped_overflow
    assert skipped >= 1 and ref.steps == 7 and len(ref.losses) == 7
    assert ref_t.scheduler.last_epoch == ref.steps  # one schedule step per counted update
    assert ref_t.state.batches_in_epoch == 7 + skipped  # skipped updates did read their data
    saved = torch.load(tmp_path / "a" / "checkpoints" / "step-7" / "scaler.pt",
                       weights_only=True)
    assert saved["scale"] == scaler.get_scale() and saved["scale"] < 3e38

    t = Trainer(config(tiny_bert_dir, corpus, tmp_path / "b", **SCALER_KW))
    _inject_scaler(t, 3e38)
    _stop_after(t, 4, signal.SIGTERM)
    part = t.train()
    assert part.stopped == "interrupted" and part.steps == 4
    t2 = Trainer(config(tiny_bert_dir, corpus, tmp_path / "b", resume=True, **SCALER_KW))
    s2 = _inject_scaler(t2, 1.0)  # overwritten by the checkpoint's scale on resume
    rest = t2.train()
    assert rest.steps == 7 and rest.losses == pytest.approx(ref.losses[4:], abs=1e-6)
    assert s2.get_scale() == scaler.get_scale()
    ma = load_file(str(tmp_path / "a" / "checkpoints" / "step-7" / "model.safetensors"))
    mb = load_file(str(tmp_path / "b" / "checkpoints" / "step-7" / "model.safetensors"))
    for k in ma:
        torch.testing.assert_close(mb[k], ma[k], rtol=0, atol=1e-6)


def _train_argv(tiny: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(tiny), "--train-file", str(corpus), "--output-dir",
            str(out), "--batch-size", "8", "--pooler", "avg", "--mlp", "none",
            "--no-progress", "--learning-rate", "1e-3", *extra]


def _one_error_line(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert "Traceback" not in err
    errors = [x for x in lines if x.startswith("csekit: error:")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize("failure", ["enospc", "torch_zip", "precheck"])
def test_full_disk_during_save_is_one_line(tiny_bert_dir: Path, corpus: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str],
                                           failure: str) -> None:
    out = tmp_path / "run"
    real_save = torch.save
    real_usage = ckpt_mod.shutil.disk_usage

    def full_save(obj, f, *a, **kw):  # type: ignore[no-untyped-def]
        if "step-4" in str(f) and str(f).endswith("optimizer.pt"):
            if failure == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos "
                               "123 vs 456")  # what torch.save raises on a full disk
        return real_save(obj, f, *a, **kw)

    def small_disk(path):  # type: ignore[no-untyped-def]
        usage = real_usage(path)
        if "step-4" in str(ckpt_mod._target_for_test):
            return usage._replace(free=1000)
        return usage

    if failure == "precheck":
        monkeypatch.setattr(ckpt_mod, "_target_for_test", "", raising=False)
        real_errors = ckpt_mod.disk_errors

        def tracking(target, **kw):  # type: ignore[no-untyped-def]
            ckpt_mod._target_for_test = str(target)
            return real_errors(target, **kw)

        monkeypatch.setattr(ckpt_mod, "disk_errors", tracking)
        monkeypatch.setattr(ckpt_mod.shutil, "disk_usage", small_disk)
    else:
        monkeypatch.setattr(torch, "save", full_save)
    rc = main(_train_argv(tiny_bert_dir, corpus, out, "--max-steps", "6", "--save-steps", "2"))
    err = capsys.readouterr().err
    assert rc == 2
    line = _one_error_line(err)
    assert "no space left" in line and "bytes" in line
    assert "step-4" in line and str(out / "checkpoints" / "step-2") in line  # last good
    needed = int(line.split("(")[1].split(" bytes")[0])
    assert needed > 3 * sum(v.numel() * 4 for v in load_file(
        str(tiny_bert_dir / "model.safetensors")).values())  # weights + 2 Adam moments
    # the previous checkpoint is intact, nothing half-written is left
    assert _ckpts(out) == [2]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    state = json.loads((out / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert state["step"] == 2
    torch.load(out / "checkpoints" / "step-2" / "optimizer.pt", weights_only=True)


def test_full_disk_while_saving_the_best_model_is_one_line(
        tiny_bert_dir: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors import torch as st_torch

    out = tmp_path / "run"
    real = st_torch.save_file

    def full(*a, **kw):  # type: ignore[no-untyped-def]
        if any(".best-next" in str(x) for x in (*a, *kw.values())):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **kw)

    import transformers.modeling_utils as mu
    monkeypatch.setattr(mu, "safe_save_file", full, raising=False)
    monkeypatch.setattr(st_torch, "save_file", full)
    rc = main(_train_argv(tiny_bert_dir, corpus, out, "--max-steps", "2"))
    monkeypatch.setattr(st_torch, "save_file", real)
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "no space left" in line and "best model" in line and "bytes" in line
    assert str(out / "checkpoints" / "step-2") in line  # the final checkpoint came first


def test_unreadable_checkpoint_on_resume_is_one_line(tiny_bert_dir: Path, corpus: Path,
                                                     tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(_train_argv(tiny_bert_dir, corpus, out, "--max-steps", "2")) == 0
    ck = out / "checkpoints" / "step-2"
    (ck / "optimizer.pt").write_bytes(b"\x00" * 10)  # truncated by an I/O error
    capsys.readouterr()
    rc = main(_train_argv(tiny_bert_dir, corpus, out, "--max-steps", "4", "--resume"))
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "cannot read checkpoint file" in line and "optimizer.pt" in line
    (ck / "optimizer.pt").unlink()
    (ck / "trainer_state.json").write_text("{\"step\": 2,")
    rc = main(_train_argv(tiny_bert_dir, corpus, out, "--max-steps", "4", "--resume"))
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and str(ck) in line


def test_disk_errors_passes_other_errors_through(tmp_path: Path) -> None:
    with pytest.raises(PermissionError), \
            ckpt_mod.disk_errors(tmp_path / "x", needed=1, what="x", last_good=None):
        raise PermissionError(errno.EACCES, "denied")
    with pytest.raises(CheckpointError, match="no checkpoint saved yet"), \
            ckpt_mod.disk_errors(tmp_path / "x", needed=1, what="x", last_good=None):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")


def test_rank0_checkpoint_choice_and_loaded_step_check(tmp_path: Path) -> None:
    """One process: the decision functions the trainer uses on every rank."""
    from csekit.errors import ConfigError
    from csekit.training.agreement import agree_flags, agree_on_checkpoint, check_loaded_step

    out = tmp_path / "run"
    assert agree_on_checkpoint(out, resume=True) is None  # nothing there: from scratch
    for step in (2, 10, 4):
        (out / "checkpoints" / f"step-{step}").mkdir(parents=True)
        (out / "checkpoints" / f"step-{step}" / "trainer_state.json").write_text("{}")
    (out / "checkpoints" / ".step-12.tmp-1-x").mkdir()  # a killed save is not a checkpoint
    assert agree_on_checkpoint(out, resume=True) == 10
    with pytest.raises(ConfigError, match="already holds checkpoints.*--resume"):
        agree_on_checkpoint(out, resume=False)
    check_loaded_step(10, 10, torch.device("cpu"))
    with pytest.raises(CheckpointError, match="did not all load checkpoint step-10"):
        check_loaded_step(8, 10, torch.device("cpu"))
    assert agree_flags([True, False], torch.device("cpu")) == [True, False]

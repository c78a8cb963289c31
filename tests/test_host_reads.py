"""The training step's host reads (issue #28): on a GPU the losses, stats and agreed flags of
each update stay on the device and are read every --logging-steps (and before anything uses the
weights: evaluation, checkpoints), with the same results.

No GPU here: the deferred mode (what a CUDA device gets, csekit.training.step.READ_EVERY_UPDATE)
is switched on for the CPU, where its results can be compared with the every-update reads the
CPU keeps: the same losses to the bit, the same metrics and weights, a non-finite loss named at
the step it happened and never checkpointed, --skip-nonfinite still skipping exactly that
update, and a stop request on one process stopping both at the same step.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from csekit.errors import TrainingError
from csekit.training import Trainer
from csekit.training.step import PendingUpdate

sys.path.insert(0, str(Path(__file__).parent))
from test_train import _nan_at, config, make_corpus

HERE = Path(__file__).parent


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    return make_corpus(tmp_path / "corpus.txt", n=200)


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each .tolist() / .item() called from the step's code or the objective's reader."""
    calls: list[str] = []
    watched = ("training/step.py", "objectives/base.py")
    for name in ("tolist", "item"):
        real = getattr(torch.Tensor, name)

        def wrapper(self, *a, _real=real, _name=name):  # type: ignore[no-untyped-def]
            caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
            if caller.endswith(watched):
                calls.append(_name)
            return _real(self, *a)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return calls


def _run(tiny: Path, corpus: Path, out: Path, deferred: bool, monkeypatch: pytest.MonkeyPatch,
         **kw: object) -> tuple[Trainer, object, list[str]]:
    t = Trainer(config(tiny, corpus, out, **kw))
    t.stepper.deferred = deferred  # (what READ_EVERY_UPDATE gives a CUDA device)
    with monkeypatch.context() as m:
        reads = _count_reads(m)
        res = t.train()
    return t, res, reads


def test_deferred_reads_give_the_same_run(tiny_bert_dir: Path, corpus: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    kw = {"objective": "clusterns", "n_clusters": 4, "kmeans_start_cosine": 0.99,
          "max_steps": 12, "grad_accum_steps": 2, "logging_steps": 4, "save_steps": 6,
          "dropout": 0.1, "length_subbatches": 1}
    runs = {}
    for deferred in (False, True):
        out = tmp_path / f"d{deferred}"
        _t, res, reads = _run(tiny_bert_dir, corpus, out, deferred, monkeypatch, **kw)
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        runs[deferred] = (res, reads, records,
                          load_file(str(out / "checkpoints" / "step-12" / "model.safetensors")))
    (r0, reads0, m0, w0), (r1, reads1, m1, w1) = runs[False], runs[True]
    assert len(r1.losses) == 12 and r1.losses == r0.losses  # to the bit
    strip = [{k: v for k, v in r.items() if k != "sentences_per_s"} for r in m0]
    assert [{k: v for k, v in r.items() if k != "sentences_per_s"} for r in m1] == strip
    assert [r["step"] for r in m1] == [4, 8, 12] and all("obj/pos_cos" in r for r in m1)
    for k, v in w0.items():
        assert torch.equal(v, w1[k]), k
    # every micro-step read its loss (24) vs one read at each read point: the logging steps
    # 4, 8, 12 and the checkpoint of step 6
    assert len(reads0) == 24 and len(reads1) == 4, (len(reads0), len(reads1))


@pytest.mark.parametrize("nan_step,save_steps,kept", [(3, 4, "step-2"), (5, 100, None)])
def test_deferred_nonfinite_is_named_at_its_step_and_never_saved(
        tiny_bert_dir: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        nan_step: int, save_steps: int, kept: str | None) -> None:
    """Logging every 10 steps: the NaN of update 3 is read at the checkpoint of step 4 (which
    is then not written), that of update 5 at the end (no final checkpoint, no model)."""
    out = tmp_path / "r"
    t = Trainer(config(tiny_bert_dir, corpus, out, max_steps=8, logging_steps=10,
                       save_steps=save_steps))
    t.stepper.deferred = True
    if kept:  # a good checkpoint before the NaN
        t.config.save_steps = save_steps = 2
    _nan_at(t, nan_step)
    with pytest.raises(TrainingError, match=rf"non-finite loss \(nan\) at step {nan_step};"):
        t.train()
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir()) \
        if (out / "checkpoints").exists() else []
    assert ckpts == ([kept] if kept else [])
    assert not (out / "modules.json").exists()


def test_deferred_skip_nonfinite_skips_that_update(tiny_bert_dir: Path, corpus: Path,
                                                   tmp_path: Path) -> None:
    t = Trainer(config(tiny_bert_dir, corpus, tmp_path / "r", skip_nonfinite=True,
                       logging_steps=5))
    t.stepper.deferred = True
    model = t.accelerator.unwrap_model(t.model)
    _nan_at(t, 2)
    original = t._step
    seen = []

    def step(data):  # type: ignore[no-untyped-def]
        before = {k: v.clone() for k, v in model.state_dict().items()}
        res = original(data)
        seen.append(res[2])
        if not res[2]:
            for k, v in model.state_dict().items():
                assert torch.equal(v, before[k]), k
        return res

    t._step = step  # type: ignore[method-assign]
    res = t.train()
    assert seen[:3] == [True, False, True] and t.state.skipped_nonfinite == 1
    assert res.steps == 8 and len(res.losses) == 8 and all(math.isfinite(x) for x in res.losses)


def test_read_decodes_flags_in_order(tiny_bert_dir: Path, corpus: Path, tmp_path: Path) -> None:
    """The agreed flags of several pending updates: a stop from any process sets stop_agreed;
    a non-finite flag (another process's loss) stops at that update's step even when this
    process's own loss is finite."""
    t = Trainer(config(tiny_bert_dir, corpus, tmp_path / "r"))
    s = t.stepper
    s.pending = [PendingUpdate(7, torch.tensor([1.0, 3.0]), {"pos_cos": torch.tensor(0.5),
                                                              "k": 4}, torch.tensor([0.0, 0.0])),
                 PendingUpdate(8, torch.tensor([2.0, 2.0]), {}, torch.tensor([0.0, 1.0]))]
    got = s.read(t.state)
    assert got == [(7, 2.0, {"pos_cos": 0.5, "k": 4.0}), (8, 2.0, {})] and s.stop_agreed
    s.pending = [PendingUpdate(9, torch.tensor([1.0]), {}, torch.tensor([0.0, 0.0])),
                 PendingUpdate(10, torch.tensor([1.0]), {}, torch.tensor([2.0, 0.0]))]
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at step 10;"):
        s.read(t.state)


@pytest.mark.slow
def test_deferred_stop_on_one_process_stops_both_at_the_same_step(tiny_bert_dir: Path,
                                                                  tmp_path: Path) -> None:
    """2 gloo processes, deferred reads, a stop request on rank 1 alone during update 3: both
    learn it at the read point of step 5 (--logging-steps 5), checkpoint step 5 and stop.
    Slow (a torchrun launch, ~40 s loaded); test_read_decodes_flags_in_order covers the
    decoding in process."""
    from test_distributed_agreement import _env, _torchrun

    corpus = make_corpus(tmp_path / "corpus.txt", n=200)
    out = tmp_path / "probe"
    run = tmp_path / "run"
    cmd = _torchrun(2) + [
        str(HERE / "_deferred_stop_probe.py"), str(out), "--", "--model", str(tiny_bert_dir),
        "--train-file", str(corpus), "--output-dir", str(run), "--batch-size", "8",
        "--max-steps", "12", "--logging-steps", "5", "--save-steps", "100", "--pooler",
        "avg", "--mlp", "none", "--no-progress"]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, check=False,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, r in enumerate(ranks):  # (rank 0 got no signal itself: 130, as before)
        assert r == {"steps": 5, "stopped": "interrupted", "exit_code": 143 if rank else 130,
                     "deferred": True, "losses": 5}, ranks
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-5"]


@pytest.mark.parametrize("deferred", [False, True])
def test_fp16_overflow_is_found_with_one_read(deferred: bool,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether the gradient scaler skipped the update: from the scale going down, read once
    in the deferred mode (a device comparison), twice (get_scale before and after) otherwise.
    A real GradScaler on the CPU (csekit refuses fp16 training without CUDA, the scaler
    itself works), wrapped as Accelerate's optimizer wraps it (step, then update)."""
    from types import SimpleNamespace

    from csekit.training.step import UpdateStep

    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    model = torch.nn.Linear(3, 1)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)

    class Wrapped:
        def step(self) -> None:
            scaler.step(sgd)
            scaler.update()

    acc = SimpleNamespace(scaler=scaler, device=torch.device("cpu"))
    s = UpdateStep(config=None, accelerator=acc, model=model, objective=None,
                   optimizer=Wrapped(), scheduler=None, world=1, output_dir=Path("."),
                   take=lambda item, state: item)
    s.deferred = deferred
    for poison, expected in ((False, False), (True, True), (False, False)):
        sgd.zero_grad()
        scaler.scale(model(torch.ones(2, 3)).sum()).backward()
        if poison:
            model.weight.grad[0, 0] = float("inf")
        w = model.weight.detach().clone()
        with monkeypatch.context() as m:
            reads = _count_reads(m)
            real_get_scale = scaler.get_scale
            m.setattr(scaler, "get_scale", lambda r=reads, g=real_get_scale:
                      r.append("get_scale") or g())
            assert s.optimizer_step() is expected
        assert torch.equal(model.weight, w) is expected  # a skipped step leaves the weights
        # one read of a device comparison, or two get_scale() reads (each an .item())
        assert reads == (["item"] if deferred else ["get_scale", "get_scale"])

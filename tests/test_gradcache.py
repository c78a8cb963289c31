"""Gradient caching (``--mini-batch-size``, csekit.training.gradcache, issue #26).

Oracles:
- dropout 0, float64: a cached update equals the uncached update of the whole batch (loss,
  every parameter after an SGD step, the objective's state) for every objective, on sentences,
  pairs and triplets, with the [CLS]+MLP head and with the prompt pooler (template denoising);
- dropout on: pass 3 re-embeds exactly pass 1's embeddings, and the parameter gradients equal a
  reference that runs the same mini-batches one after the other in ONE graph (so with the same
  RNG states, drawn in the same order) and back-propagates the whole loss; the random stream
  afterwards is the reference's (pass 3 draws nothing the run can see);
- the Trainer: a cached run equals an uncached run (dropout 0), a resumed cached run equals the
  uninterrupted one (dropout on), 2 processes cached == 1 process cached (test below, torchrun);
- bad input: one line, exit 2.

SGD, not AdamW, for the comparisons of parameters: Adam's first step is about lr * sign(g),
which would hide a gradient off by a factor.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from pathlib import Path

import pytest
import torch

from csekit.data.collate import tokenize_pairs
from csekit.modeling.encoder import Encoder
from csekit.objectives import build_objective
from csekit.training import TrainConfig
from csekit.training.checkpoint import TrainerState
from csekit.training.gradcache import cached_forward_backward, row_slices, slice_rows
from csekit.training.step import UpdateStep
from csekit.training.supervised import N_VIEWS, tokenize_batch, views

sys.path.insert(0, str(Path(__file__).parent))

OBJECTIVES = ["simcse", "focal", "clusterns", "clusterns-focal"]
MODES = ["unsupervised", "pairs", "triplets"]
B = 12  # examples per batch


def _sentences(n: int, seed: int) -> list[str]:
    words = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "tree", "quickly",
             "slowly", "red", "blue", "big", "small", "house", "river", "walked", "jumped",
             "over", "bright", "night", "morning"]
    g = torch.Generator().manual_seed(seed)
    return [" ".join(words[int(i)] for i in torch.randint(0, len(words), (int(k),), generator=g))
            for k in torch.randint(3, 14, (n,), generator=g)]


def _examples(mode: str, seed: int) -> list:
    s = _sentences(3 * B, seed)
    if mode == "unsupervised":
        return s[:B]
    n = N_VIEWS[mode]
    return [tuple(s[n * i + k] for k in range(n)) for i in range(B)]


def _encoder(model_dir: Path, *, pooler: str, dropout: float) -> Encoder:
    enc = Encoder.from_pretrained(str(model_dir), pooler=pooler, mlp="train", dropout=dropout)
    torch.manual_seed(0)  # a head that is not the zero-initialised default
    if enc.head is not None:
        for p in enc.head.parameters():
            torch.nn.init.normal_(p, std=0.2)
    return enc.double().train()


def _objective(name: str, mode: str) -> torch.nn.Module:
    cfg = TrainConfig(objective=name, n_clusters=3, kmeans_start_cosine=1.0, bml_weight=0.1,
                      hard_negative_weight=0.5 if mode == "triplets" else 0.0)
    return build_objective(name, **cfg.objective_hparams())


class _Accel:
    """The Accelerator surface UpdateStep uses, on one CPU process in float64."""

    device = torch.device("cpu")
    scaler = None

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def no_sync(self, model):
        return contextlib.nullcontext()

    def clip_grad_norm_(self, params, norm):
        return torch.nn.utils.clip_grad_norm_(params, norm)


def _stepper(enc: Encoder, objective: torch.nn.Module, mode: str, mini: int | None,
             tmp: Path, *, accum: int = 1) -> UpdateStep:
    cfg = TrainConfig(objective="simcse", supervision=mode, batch_size=B, mini_batch_size=mini,
                      max_grad_norm=None, grad_accum_steps=accum).resolved()
    opt = torch.optim.SGD(enc.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return UpdateStep(config=cfg, accelerator=_Accel(), model=enc, objective=objective,
                      optimizer=opt, scheduler=sched, world=1, output_dir=tmp,
                      take=lambda item, state: item)


def _inputs(enc: Encoder, mode: str, seed: int) -> dict[str, torch.Tensor]:
    return tokenize_batch(enc.tokenizer, _examples(mode, seed), mode, 32, prompt=enc.prompt)


def _run(enc, objective, mode, mini, tmp, batches):
    step = _stepper(enc, objective, mode, mini, tmp)
    state = TrainerState()
    losses = []
    for inputs in batches:
        loss, _stats, applied = step.run(iter([inputs]), state)
        assert applied
        losses.append(loss)
    return losses


def _fast(pooler: str, mode: str, objective: str) -> bool:
    """The default suite's share of the matrix (the rest is marked slow): every objective on
    sentences with [CLS], and ClusterNS-focal (the objective that uses most) everywhere."""
    return objective == "clusterns-focal" or (pooler == "cls" and mode == "unsupervised")


MATRIX = [pytest.param(p, m, o, marks=() if _fast(p, m, o) else pytest.mark.slow)
          for p in ("cls", "prompt") for m in MODES for o in OBJECTIVES]


@pytest.mark.parametrize("pooler,mode,objective", MATRIX)
def test_cached_update_equals_uncached_at_dropout_0(tiny_bert_dir: Path, tmp_path: Path,
                                                     objective: str, mode: str,
                                                     pooler: str) -> None:
    base = _encoder(tiny_bert_dir, pooler=pooler, dropout=0.0)
    base.lean_forward = True  # (the CPU default; it applies to the [CLS] runs)
    base.length_subbatches = 3 if pooler == "cls" else 1  # sub-batches inside each mini-batch
    obj = _objective(objective, mode)
    batches = [_inputs(base, mode, seed) for seed in (1, 2)]  # 2 updates: centroids move too
    runs = {}
    for mini in (None, 5):  # 5 does not divide 12: the last mini-batch holds 2 examples
        enc, o = copy.deepcopy(base), copy.deepcopy(obj)
        runs[mini] = (_run(enc, o, mode, mini, tmp_path, batches), enc, o)
    (l0, e0, o0), (l1, e1, o1) = runs[None], runs[5]
    assert l1 == pytest.approx(l0, rel=1e-12, abs=1e-12)
    moved = 0
    for (name, p0), (_, p1) in zip(e0.named_parameters(), e1.named_parameters()):
        torch.testing.assert_close(p1, p0, rtol=1e-10, atol=1e-12, msg=name)
        moved += int(not torch.equal(p0, dict(base.named_parameters())[name]))
    assert moved > 10  # the step really changed the model
    for (k, v0), (_, v1) in zip(o0.state_dict().items(), o1.state_dict().items()):
        torch.testing.assert_close(v1, v0, rtol=1e-6, atol=1e-7, msg=k)
    if objective.startswith("clusterns"):
        assert any(k.endswith("centroids") for k in o1.state_dict())


class _Recorder(torch.nn.Module):
    """The encoder, recording each forward's embeddings and whether it kept a graph."""

    def __init__(self, enc: Encoder) -> None:
        super().__init__()
        self.enc = enc
        self.calls: list[tuple[bool, torch.Tensor]] = []

    def forward(self, **inputs):
        z = self.enc(**inputs)
        self.calls.append((torch.is_grad_enabled(), z.detach().clone()))
        return z


@pytest.mark.parametrize("objective", ["simcse", "clusterns-focal"])
@pytest.mark.parametrize("mode,pooler,lean", [("unsupervised", "cls", True),
                                              ("unsupervised", "cls", False),
                                              ("unsupervised", "cls", "checkpointing"),
                                              ("triplets", "prompt", False)])
def test_dropout_masks_replay_and_gradients_match_one_graph(tiny_bert_dir: Path, objective: str,
                                                            mode: str, pooler: str,
                                                            lean: bool | str) -> None:
    enc = _encoder(tiny_bert_dir, pooler=pooler, dropout=0.1)
    enc.lean_forward = lean is True
    if lean == "checkpointing":  # transformers' gradient checkpointing inside pass 3
        b = enc.backbone
        new = hasattr(b, "activation_checkpointing_enable")  # (transformers 5's new name)
        enable = b.activation_checkpointing_enable if new else b.gradient_checkpointing_enable
        key = "activation_checkpointing_kwargs" if new else "gradient_checkpointing_kwargs"
        enable(**{key: {"use_reentrant": False}})
    enc.length_subbatches = 2 if pooler == "cls" else 1
    obj = _objective(objective, mode)
    inputs = _inputs(enc, mode, 3)
    mini, n = 4, N_VIEWS[mode]
    ref_enc, ref_obj = copy.deepcopy(enc), copy.deepcopy(obj)

    # cached
    rec = _Recorder(enc)
    syncs: list[int] = []
    torch.manual_seed(11)
    out = cached_forward_backward(
        model=rec, objective=obj, inputs=inputs, mini_batch_size=mini, n_views=n,
        split=lambda z: views(z, mode), backward=lambda loss: loss.backward(),
        no_sync=lambda: syncs.append(1) or contextlib.nullcontext(), device="cpu")
    after_cached = torch.get_rng_state()
    k = len(rec.calls) // 2
    assert k == 3 and [g for g, _ in rec.calls] == [False] * k + [True] * k
    assert len(syncs) == k - 1  # every re-forward but the last without DDP's all-reduce
    for (_, first), (_, second) in zip(rec.calls[:k], rec.calls[k:]):
        assert torch.equal(first, second)  # pass 3 re-embeds pass 1's embeddings exactly

    # reference: the same mini-batches in order, all in one graph, one backward
    total = inputs["input_ids"].shape[0]
    torch.manual_seed(11)
    z = torch.cat([ref_enc(**slice_rows(inputs, rows, total))
                   for rows in row_slices(total, n, mini)])
    ref_out = ref_obj(*views(z, mode))
    ref_out.loss.backward()
    assert torch.equal(z.detach(), torch.cat([c for _, c in rec.calls[:k]]))
    assert out.loss.item() == pytest.approx(ref_out.loss.item(), rel=1e-12)
    assert torch.equal(after_cached, torch.get_rng_state())  # the stream goes on as the ref's
    with_grad = 0
    for (name, p), (_, q) in zip(enc.named_parameters(), ref_enc.named_parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=name)
            with_grad += int(p.grad.abs().sum() > 0)
    assert with_grad > 10
    # the dropout really was on: another draw gives other embeddings
    torch.manual_seed(12)
    with torch.no_grad():
        other = enc(**slice_rows(inputs, slice(0, n * mini), total))
    assert not torch.allclose(other, rec.calls[0][1])


def test_accumulation_composes(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """grad_accum_steps 2 with caching == without (dropout 0): each micro-step's cached
    gradient adds to the last one's, as the uncached ones do."""
    base = _encoder(tiny_bert_dir, pooler="cls", dropout=0.0)
    obj = _objective("clusterns", "unsupervised")
    batches = [_inputs(base, "unsupervised", s) for s in (4, 5)]
    params = []
    for mini in (None, 4):
        enc, o = copy.deepcopy(base), copy.deepcopy(obj)
        step = _stepper(enc, o, "unsupervised", mini, tmp_path, accum=2)
        loss, _s, applied = step.run(iter(batches), TrainerState())
        assert applied
        params.append((loss, [p.detach().clone() for p in enc.parameters()]))
    assert params[1][0] == pytest.approx(params[0][0], rel=1e-12)
    for p1, p0 in zip(params[1][1], params[0][1]):
        torch.testing.assert_close(p1, p0, rtol=1e-10, atol=1e-12)


def test_unreplayable_device_is_refused() -> None:
    from csekit.errors import ConfigError
    from csekit.training.gradcache import RngSnapshot

    with pytest.raises(ConfigError, match="xpu is not supported"):
        RngSnapshot.capture("xpu")


def test_row_slices_keep_examples_whole() -> None:
    assert row_slices(24, 2, 5) == [slice(0, 10), slice(10, 20), slice(20, 24)]
    assert row_slices(36, 3, 4) == [slice(0, 12), slice(12, 24), slice(24, 36)]
    with pytest.raises(ValueError):
        row_slices(7, 2, 2)
    x = {"input_ids": torch.arange(8).reshape(4, 2), "prompt_template": torch.arange(4)}
    assert slice_rows(x, slice(2, 4), 4)["prompt_template"].tolist() == [2, 3]
    with pytest.raises(ValueError, match="by row"):
        slice_rows({"x": torch.zeros(3)}, slice(0, 1), 4)


def test_pairs_layout_of_unsupervised_rows(tiny_bert_dir: Path) -> None:
    """The unsupervised rows 2i, 2i+1 (sentence i twice) stay in one mini-batch."""
    enc = _encoder(tiny_bert_dir, pooler="cls", dropout=0.0)
    batch = tokenize_pairs(enc.tokenizer, _sentences(6, 0), 32)
    for rows in row_slices(12, 2, 4):
        ids = slice_rows(batch, rows, 12)["input_ids"]
        assert torch.equal(ids[0::2], ids[1::2])

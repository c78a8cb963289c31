"""Length-sorted sub-batches of the training forward (issue #17), the detached backbone pooler,
and the find_unused_parameters probe.

Oracles: the one-batch forward of the same rows (float64, dropout 0): the sub-batched forward
must give the same embeddings, loss and gradient of every parameter; a brute-force enumeration
of all partitions for the planner; the checkpoint's own pooler weights for the saved folder.
Mutation checked by hand: un-permuting with ``order`` instead of its inverse (and returning
the groups' concatenation without un-permuting) makes the equality tests fail.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from csekit.data import split_views, tokenize_pairs
from csekit.modeling.encoder import Encoder
from csekit.modeling.speed import subbatch
from csekit.modeling.speed.spare_pooler import SparePooler
from csekit.modeling.speed.subbatch import (
    part_cost_for_width,
    plan_length_subbatches,
    right_padded_lengths,
)
from csekit.objectives import build_objective
from csekit.training.speed import unused_parameters

WORDS = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by",
         "at", "from", "city", "river", "music", "war"]


def _sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20))) for _ in range(n)]
    for i in range(1, n, 3):  # the shortest rows, all of one length: a group without padding
        out[i] = "river"
    return out


def _cost(lens: np.ndarray, groups: list[np.ndarray], part_cost: int) -> int:
    return sum(len(g) * int(lens[g].max()) for g in groups) + part_cost * len(groups)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_parts", [1, 2, 3, 4])
def test_plan_is_optimal_and_a_permutation(seed: int, max_parts: int) -> None:
    rng = np.random.default_rng(seed)
    lens = rng.integers(2, 12, size=int(rng.integers(1, 14)))
    part_cost = int(rng.integers(0, 20))
    groups = plan_length_subbatches(lens, max_parts, part_cost)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(lens)))
    assert 1 <= len(groups) <= max_parts
    for g in groups:  # stable: ties keep input order; each group is sorted by length
        assert np.all(np.diff(lens[g]) >= 0)
    # brute force: every split of the sorted rows into at most max_parts contiguous groups
    order = np.argsort(lens, kind="stable")
    best = None
    n = len(lens)
    for k in range(1, max_parts + 1):
        for cuts in itertools.combinations(range(1, n), k - 1):
            bounds = [0, *cuts, n]
            parts = [order[a:b] for a, b in itertools.pairwise(bounds)]
            c = _cost(lens, parts, part_cost)
            best = c if best is None else min(best, c)
    assert _cost(lens, groups, part_cost) == best


def test_part_cost_scales_with_width() -> None:
    assert part_cost_for_width(384) == 96 and part_cost_for_width(768) == 24
    # a toy model: one group of 32 rows of 16 tokens beats any split
    lens = np.array([4, 16] * 16)
    assert len(plan_length_subbatches(lens, 4, part_cost_for_width(32))) == 1
    assert len(plan_length_subbatches(lens, 4, part_cost_for_width(384))) == 2


def test_right_padding_detection() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    assert right_padded_lengths(mask) == [3, 2, 4]
    assert right_padded_lengths(torch.tensor([[0, 1, 1], [1, 1, 1]])) is None  # left padding
    assert right_padded_lengths(torch.tensor([[1, 0, 1]])) is None


@pytest.fixture(scope="module")
def enc64(tiny_bert_dir: Path):
    def make(pooler: str, mlp: str) -> Encoder:
        torch.manual_seed(3)
        enc = Encoder.from_pretrained(str(tiny_bert_dir), pooler=pooler, mlp=mlp, dropout=0.0)
        enc.subbatch_part_cost = 4  # the toy width would keep one group (part_cost_for_width)
        return enc.double().train()
    return make


def _loss_and_grads(enc: Encoder, inputs: dict[str, torch.Tensor], objective_name: str):
    enc.zero_grad(set_to_none=True)
    z = enc(**inputs)
    z1, z2 = split_views(z)
    loss = build_objective(objective_name, temperature=0.05)(z1, z2).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
    return z.detach(), loss.detach(), grads


@pytest.mark.parametrize("pooler,mlp", [("avg", "none"), ("cls", "train"),
                                        ("avg_first_last", "none"), ("cls", "none")])
def test_subbatched_forward_equals_one_batch(enc64, pooler: str, mlp: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    enc = enc64(pooler, mlp)
    inputs = tokenize_pairs(enc.tokenizer, _sentences(24), max_seq_len=16)
    enc.length_subbatches = 1
    z_ref, loss_ref, g_ref = _loss_and_grads(enc, inputs, "simcse")

    calls: list[tuple[int, int, bool]] = []
    forward_one = enc._forward_rows

    def spy(ids, mask, tts=None, *, padded=True):  # type: ignore[no-untyped-def]
        calls.append((ids.shape[0], ids.shape[1], padded))
        assert padded == bool((mask == 0).any())  # padded=False only without any padding
        return forward_one(ids, mask, tts, padded=padded)

    monkeypatch.setattr(enc, "_forward_rows", spy)
    enc.length_subbatches = 4
    z, loss, g = _loss_and_grads(enc, inputs, "simcse")
    assert 1 < len(calls) <= 4 and sum(c[0] for c in calls) == 48
    lengths = inputs["attention_mask"].sum(1)
    # less padding than one batch, each group exactly as wide as its longest row
    assert sum(r * w for r, w, _ in calls) < 48 * int(lengths.max())
    assert any(not p for _, _, p in calls)  # the "river" rows: a group without padding
    torch.testing.assert_close(z, z_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(loss, loss_ref, rtol=0, atol=1e-12)
    assert g.keys() == g_ref.keys() and len(g) > 0
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-9, atol=1e-12, msg=name)


def test_subbatches_only_in_train_mode_and_left_padding_falls_back(enc64,
                                                                     monkeypatch) -> None:
    enc = enc64("avg", "none")
    enc.length_subbatches = 4
    inputs = tokenize_pairs(enc.tokenizer, _sentences(8), max_seq_len=16)
    seen: list[int] = []
    real = subbatch.plan_length_subbatches

    def counting(*a, **k):  # type: ignore[no-untyped-def]
        seen.append(1)
        return real(*a, **k)

    monkeypatch.setattr(subbatch, "plan_length_subbatches", counting)
    enc.eval()
    with torch.no_grad():
        enc(**inputs)
    assert not seen  # eval mode: encode() plans its own batches
    enc.train()
    left = {k: v.flip(1) for k, v in inputs.items()}  # pads on the left: not split
    with torch.no_grad():
        enc(**left)
    assert not seen
    with torch.no_grad():
        enc(**inputs)
    assert seen


def test_backbone_pooler_detached_when_unused_and_saved(tiny_bert_dir: Path,
                                                        tmp_path: Path) -> None:
    original = load_file(str(tiny_bert_dir / "model.safetensors"))
    pooler_keys = sorted(k for k in original if k.startswith("pooler."))
    assert pooler_keys
    enc = Encoder.from_pretrained(str(tiny_bert_dir), pooler="avg", mlp="none")
    assert enc.backbone.pooler is None
    assert not any("pooler" in n for n, _ in enc.named_parameters())
    enc.save(tmp_path / "m")
    saved = load_file(str(tmp_path / "m" / "model.safetensors"))
    for k in pooler_keys:  # the checkpoint's pooler weights survive the save
        torch.testing.assert_close(saved[k], original[k], rtol=0, atol=0)
    assert enc.backbone.pooler is None  # and stay out of the module afterwards
    # the saved folder loads with cls (the backbone pooler) and gives the raw model's output
    cls = Encoder.from_pretrained(str(tmp_path / "m"), pooler="cls", mlp="none")
    raw = Encoder.from_pretrained(str(tiny_bert_dir), pooler="cls", mlp="none")
    assert raw.backbone.pooler is not None
    sents = ["a man plays a guitar", "the cat"]
    torch.testing.assert_close(cls.encode(sents), raw.encode(sents))
    # the train-only head (SimCSE's cls + mlp train) never uses the backbone pooler either
    assert Encoder.from_pretrained(str(tiny_bert_dir), pooler="cls", mlp="train") \
        .backbone.pooler is None


def test_unused_parameter_probe(tiny_bert_dir: Path) -> None:
    enc = Encoder.from_pretrained(str(tiny_bert_dir), pooler="avg", mlp="none")
    rng = torch.get_rng_state()
    assert unused_parameters(enc) == []
    assert torch.equal(torch.get_rng_state(), rng)  # the run's random stream is untouched
    assert all(p.grad is None for p in enc.parameters())
    enc._spare_pooler.attach(enc.backbone)  # run but not used by avg pooling: no grad
    enc.backbone.pooler = Encoder.from_pretrained(
        str(tiny_bert_dir), pooler="cls", mlp="none").backbone.pooler
    assert sorted(unused_parameters(enc)) == ["backbone.pooler.dense.bias",
                                              "backbone.pooler.dense.weight"]


def test_find_unused_parameters_only_when_a_parameter_is_unused(tiny_bert_dir: Path) -> None:
    from types import SimpleNamespace

    from accelerate.utils import DistributedDataParallelKwargs

    from csekit.training.speed import configure_training_forward

    cfg = SimpleNamespace(length_subbatches=3, compile=False, lean_forward=True)
    enc = Encoder.from_pretrained(str(tiny_bert_dir), pooler="cls", mlp="train")
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    configure_training_forward(enc, cfg, ddp_kwargs=ddp, world_size=2)
    assert enc.length_subbatches == 3 and ddp.find_unused_parameters is False
    assert "find_unused_parameters" not in ddp.to_kwargs()  # what Accelerate hands to DDP
    enc._spare_pooler = SparePooler()  # (the detached pooler dropped: another one runs)
    enc.backbone.pooler = Encoder.from_pretrained(
        str(tiny_bert_dir), pooler="cls", mlp="none").backbone.pooler  # run, never used
    configure_training_forward(enc, cfg, ddp_kwargs=ddp, world_size=2)
    assert ddp.to_kwargs().get("find_unused_parameters") is True


def test_trainer_losses_equal_with_and_without_subbatches(tiny_bert_dir: Path,
                                                          tmp_path: Path) -> None:
    """The Trainer's losses and weights at dropout 0: transformers' forward on one padded
    batch (the forward before issue #17) against csekit's CPU defaults (the lean forward on
    length-sorted sub-batches), on the same batches."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_train import make_corpus

    from csekit.training import TrainConfig, Trainer

    corpus = make_corpus(tmp_path / "corpus.txt", n=200)
    runs = {}
    for n in (1, 4):
        cfg = TrainConfig.from_dict({
            "model": str(tiny_bert_dir), "train_file": str(corpus),
            "output_dir": str(tmp_path / f"r{n}"), "batch_size": 16, "learning_rate": 3e-5,
            "max_steps": 4, "eval_steps": 100, "logging_steps": 1, "progress": False,
            "pooler": "cls", "mlp": "train", "dropout": 0.0, "seed": 5,
            "objective": "clusterns", "n_clusters": 4, "kmeans_start_cosine": 1.0,
            "length_subbatches": n, "lean_forward": n > 1})
        trainer = Trainer(cfg)
        assert trainer._unwrapped().lean_forward is (n > 1)
        trainer.encoder.subbatch_part_cost = 4  # split even the toy model's batches
        res = trainer.train()
        runs[n] = (res.losses, {k: v.detach().clone()
                                for k, v in trainer._unwrapped().state_dict().items()})
    assert len(runs[1][0]) == 4
    assert runs[4][0] == pytest.approx(runs[1][0], abs=1e-5)
    # Weights: the gradients agree to fp32 rounding (other summation order), but Adam's first
    # steps are about lr * sign(g), so an element whose gradient is ~0 can move by up to lr
    # either way (as in test_distributed_train); 4 steps at lr 3e-5 moved elements by ~7e-5.
    for k, v in runs[1][1].items():
        torch.testing.assert_close(runs[4][1][k], v, rtol=0, atol=3e-5, msg=k)


def test_length_subbatches_default_by_device() -> None:
    """None (the default): 4 on CPU, where it was measured; 1 on CUDA until gpu_check.sh has
    measured it; an explicit value wins everywhere."""
    from csekit.training import TrainConfig
    from csekit.training.speed import resolve_length_subbatches

    assert TrainConfig().length_subbatches is None
    assert resolve_length_subbatches(None, "cpu") == 4
    assert resolve_length_subbatches(None, torch.device("cuda", 1)) == 1
    assert resolve_length_subbatches(2, "cuda") == 2 and resolve_length_subbatches(1, "cpu") == 1


def test_lean_forward_default_by_device(tiny_bert_dir: Path) -> None:
    """The lean forward follows the sub-batches' rule (issue #28): None (the default) is on
    for CPU, where it was measured, and off on CUDA, where it never ran, until gpu_check.sh
    records its equality and speed there; an explicit value wins everywhere. What the Trainer
    calls (configure_training_forward) is checked for a CUDA device without one: only the
    device's type is read."""
    from types import SimpleNamespace

    from csekit.modeling.encoder import Encoder
    from csekit.training import TrainConfig
    from csekit.training.speed import configure_training_forward, resolve_lean_forward

    assert TrainConfig().lean_forward is None
    assert resolve_lean_forward(None, "cpu") is True
    assert resolve_lean_forward(None, torch.device("cuda", 0)) is False
    assert resolve_lean_forward(True, "cuda") is True and resolve_lean_forward(False, "cpu") is False
    enc = Encoder.from_pretrained(str(tiny_bert_dir), pooler="cls", mlp="train")
    for device, value, expected in (("cpu", None, True), ("cuda", None, False),
                                    ("cuda", True, True), ("cpu", False, False)):
        cfg = SimpleNamespace(length_subbatches=None, compile=False, lean_forward=value)
        configure_training_forward(enc, cfg, ddp_kwargs=SimpleNamespace(), world_size=1,
                                   device=torch.device(device))
        assert enc.lean_forward is expected and enc.runs_lean_forward is expected, (device, value)

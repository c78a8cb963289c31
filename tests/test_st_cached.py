"""Gradient-cached csekit losses for sentence-transformers (csekit.st.cached, issue #26).

Oracles:
- float64, dropout 0: a cached loss (mini-batches of 3 rows of a batch of 10: 4 mini-batches a
  column, the last one short) == the uncached csekit.st loss: the loss, the gradient of every
  backbone and head parameter, and the ClusterNS centroids over 3 steps, on pairs and triplets;
- dropout on: the re-embedded mini-batches equal pass 1's exactly, and the gradients equal a
  reference that embeds the same mini-batches in the same order in ONE graph; the random
  stream after backward is the reference's;
- sentence-transformers' trainer with csekit's subclass: cached (dropout 0) ends with the
  model, head and centroids of the uncached run, and its checkpoint holds the head and
  centroids; the model card names the cached loss.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

st = pytest.importorskip("sentence_transformers")
pytest.importorskip("datasets")

from csekit.errors import ConfigError
from csekit.st import CACHED_LOSSES, LOSS_STATE_FILE, LOSSES, SentenceTransformerTrainer
from csekit.st.cached import _slice

sys.path.insert(0, str(Path(__file__).parent))
from test_st_losses import HPARAMS, no_dropout, sentences, st_features

MINI = 3


@pytest.fixture(scope="module")
def st_folder(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from csekit.modeling.encoder import Encoder

    out = tmp_path_factory.mktemp("st-cached") / "model"
    Encoder.from_pretrained(str(tiny_bert_dir), pooler="cls_before_pooler", mlp="none").save(out)
    return out


def _losses(st_folder: Path, name: str, *, dropout: bool, triplets: bool = False):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(st_folder), device="cpu").double().train()
    if not dropout:
        no_dropout(model)
    hp = dict(HPARAMS[name])
    torch.manual_seed(11)
    plain = LOSSES[name](model, mlp=True, **hp).double()
    with torch.no_grad():  # a head far from its init, so its gradient matters
        for p in plain.head.parameters():
            p.normal_(0, 0.3)
    model2 = copy.deepcopy(model)
    cached = CACHED_LOSSES[name](model2, mini_batch_size=MINI, mlp=True, **hp).double()
    cached.head.load_state_dict(plain.head.state_dict())
    return plain, cached


def _features(model, batch: list[str], other: list[str] | None):
    feats = st_features(model, batch)
    if other is not None:
        prep = getattr(model, "preprocess", None) or model.tokenize
        feats.append(dict(prep(other)))
    return feats


def _grads(loss) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in loss.named_parameters() if p.grad is not None}


# (the default suite: every loss on pairs, ClusterNS-focal on triplets; the rest is slow)
@pytest.mark.parametrize("name,triplets", [
    pytest.param(n, t, marks=pytest.mark.slow if t and n != "clusterns-focal" else ())
    for n in CACHED_LOSSES for t in (False, True)])
def test_cached_loss_equals_uncached_at_dropout_0(st_folder: Path, name: str,
                                                  triplets: bool) -> None:
    plain, cached = _losses(st_folder, name, dropout=False)
    for step in range(3):
        batch = sentences(10, seed=step)
        other = sentences(10, seed=100 + step) if triplets else None
        for p in list(plain.parameters()) + list(cached.parameters()):
            p.grad = None
        a = plain(_features(plain.model, batch, other), None)
        b = cached(_features(cached.model, batch, other), None)
        assert b.item() == pytest.approx(a.item(), rel=1e-12)
        a.backward()
        b.backward()
        ga, gb = _grads(plain), _grads(cached)
        assert set(ga) == set(gb) and any(k.startswith("head.") for k in ga)
        assert len(ga) > 10
        for k in ga:
            torch.testing.assert_close(gb[k], ga[k], rtol=1e-9, atol=1e-12, msg=k)
        for (k, v), (_, w) in zip(plain.objective.state_dict().items(),
                                  cached.objective.state_dict().items()):
            torch.testing.assert_close(w, v, rtol=1e-6, atol=1e-7, msg=k)


@pytest.mark.parametrize("name", ["simcse", "clusterns-focal"])
def test_cached_loss_replays_dropout_and_matches_one_graph(st_folder: Path, name: str) -> None:
    plain, cached = _losses(st_folder, name, dropout=True)
    model = cached.model
    seen: list[tuple[bool, torch.Tensor]] = []
    original = model.forward

    def recording(features, *a, **k):  # type: ignore[no-untyped-def]
        out = original(features, *a, **k)
        seen.append((torch.is_grad_enabled(), out["sentence_embedding"].detach().clone()))
        return out

    model.forward = recording  # type: ignore[method-assign]
    batch = sentences(10, seed=4)
    feats = _features(model, batch, None)
    torch.manual_seed(5)
    loss = cached(feats, None)
    loss.backward()
    after = torch.get_rng_state()
    k = len(seen) // 2
    assert k == 8 and [g for g, _ in seen] == [False] * k + [True] * k  # 2 columns x 4
    for (_, first), (_, again) in zip(seen[:k], seen[k:]):
        assert torch.equal(first, again)

    # reference: the same mini-batches, in the same order, in one graph
    ref = plain.model
    ref_feats = _features(ref, batch, None)
    torch.manual_seed(5)
    embs = []
    for f in ref_feats:
        rows = f["input_ids"].shape[0]
        embs.append(torch.cat([
            ref(_slice(f, slice(s, s + MINI), rows))["sentence_embedding"]
            for s in range(0, rows, MINI)]))
    assert torch.equal(torch.cat(embs), torch.cat([z for _, z in seen[:k]]))
    ref_loss = plain.loss_from_embeddings([plain.head(e) for e in embs])
    ref_loss.backward()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-12)
    assert torch.equal(after, torch.get_rng_state())
    ga, gb = _grads(plain), _grads(cached)
    assert set(ga) == set(gb)
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-9, atol=1e-12, msg=n)


def test_bad_mini_batch_size(st_folder: Path) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(st_folder), device="cpu")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="mini_batch_size"):
            CACHED_LOSSES["simcse"](model, mini_batch_size=bad)


def _train(st_folder: Path, out: Path, cached: bool):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments

    model = SentenceTransformer(str(st_folder), device="cpu")
    no_dropout(model)
    opts = {"n_clusters": 4, "kmeans_start_cosine": 1.0, "kmeans_lr": 0.1, "bml_weight": 0.1,
            "alpha": 0.1, "beta": 0.3, "seed": 3}
    torch.manual_seed(0)
    loss = CACHED_LOSSES["clusterns"](model, mini_batch_size=3, **opts) if cached \
        else LOSSES["clusterns"](model, **opts)
    s = sentences(48, seed=9)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out), max_steps=4, per_device_train_batch_size=8, learning_rate=5e-4,
        save_strategy="steps", save_steps=4, logging_steps=2, report_to=[], use_cpu=True,
        seed=7, disable_tqdm=True, dataloader_drop_last=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, loss=loss,
                                         train_dataset=Dataset.from_dict({"a": s, "p": s}))
    trainer.train()
    return model, loss


def test_cached_loss_in_the_trainer_equals_uncached(st_folder: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    m0, l0 = _train(st_folder, tmp_path / "plain", cached=False)
    m1, l1 = _train(st_folder, tmp_path / "cached", cached=True)
    assert l1.objective.started
    torch.testing.assert_close(l1.objective.centroids, l0.objective.centroids, atol=1e-5, rtol=0)
    for (n, p), (_, q) in zip(l0.head.named_parameters(), l1.head.named_parameters()):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=0, msg=n)
    moved = 0
    for (n, p), (_, q) in zip(m0.named_parameters(), m1.named_parameters()):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=0, msg=n)
    init = st.SentenceTransformer(str(st_folder), device="cpu")
    for (_, p), (_, q) in zip(m1.named_parameters(), init.named_parameters()):
        moved += int(not torch.allclose(p, q))
    assert moved > 10
    saved = load_file(str(tmp_path / "cached" / "checkpoint-4" / LOSS_STATE_FILE))
    assert {"head.dense.weight", "head.dense.bias", "objective.clusters.centroids"} <= set(saved)
    torch.testing.assert_close(saved["objective.clusters.centroids"], l1.objective.centroids)
    m1.save(str(tmp_path / "saved"))
    card = (tmp_path / "saved" / "README.md").read_text(encoding="utf-8")
    assert "csekit.st.cached.CachedClusterNSLoss" in card
    assert '"mini_batch_size": 3' in card and '"objective": "clusterns"' in card

"""csekit's objectives as sentence-transformers losses == csekit's own training path.

Oracle: csekit's own forward (``Encoder.forward`` on a ``tokenize_pairs`` batch, the two views
split, the objective built by ``build_objective``) on the same weights with dropout 0. Losses
must agree to 1e-6 and so must the gradients of every backbone and head parameter; for
ClusterNS also the start step and the centroids over several steps.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from csekit.data import split_views, tokenize_pairs
from csekit.errors import ConfigError
from csekit.modeling.encoder import Encoder
from csekit.objectives import build_objective
from csekit.st import (
    LOSSES,
    ClusterNSFocalLoss,
    ClusterNSLoss,
    FocalInfoNCELoss,
    SimCSELoss,
)

st = pytest.importorskip("sentence_transformers")

WORDS = ["the", "city", "river", "album", "song", "was", "released", "in", "a", "new", "team",
         "film", "school", "north", "south", "church", "village", "game", "one", "two", "known"]

HPARAMS = {
    "simcse": {"temperature": 0.05},
    "focal": {"temperature": 0.07, "margin": 0.3},
    "clusterns": {"n_clusters": 4, "kmeans_start_cosine": 1.0, "kmeans_lr": 0.1,
                  "bml_weight": 0.5, "alpha": 0.1, "beta": 0.3, "seed": 5},
    "clusterns-focal": {"n_clusters": 4, "kmeans_start_cosine": 1.0, "kmeans_lr": 0.1,
                        "bml_weight": 0.5, "alpha": 0.1, "beta": 0.3, "margin": 0.2, "seed": 5},
}


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))) for _ in range(n)]


def no_dropout(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


@pytest.fixture(scope="module")
def st_folder(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT as a sentence-transformers folder with [CLS] pooling (csekit's save)."""
    out = tmp_path_factory.mktemp("st-tiny") / "model"
    Encoder.from_pretrained(str(tiny_bert_dir), pooler="cls_before_pooler", mlp="none").save(out)
    return out


def pair(st_folder: Path, mlp: bool, name: str):
    """(ST model, its loss, a csekit Encoder with the same backbone and head), dropout 0."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(st_folder), device="cpu")
    torch.manual_seed(11)
    loss = LOSSES[name](model, mlp=mlp, **HPARAMS[name])
    enc = Encoder.from_pretrained(str(st_folder), pooler="cls", mlp="train" if mlp else "none") \
        if mlp else Encoder.from_pretrained(str(st_folder), pooler="cls_before_pooler", mlp="none")
    if mlp:
        enc.head.load_state_dict(loss.head.state_dict())
    for m in (model, enc):
        m.train()
        no_dropout(m)
    return model, loss, enc


def st_features(model, batch: list[str]) -> list[dict[str, torch.Tensor]]:
    prep = getattr(model, "preprocess", None) or model.tokenize
    return [dict(prep(batch)), dict(prep(batch))]  # (s, s): the unsupervised pairs


def csekit_loss(enc: Encoder, objective, batch: list[str]) -> torch.Tensor:
    inputs = tokenize_pairs(enc.tokenizer, batch, max_seq_len=128)
    z1, z2 = split_views(enc(**inputs))
    return objective(z1, z2).loss


def grads(named) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in named if p.grad is not None}


def assert_same_losses_and_grads(ours: torch.Tensor, ref: torch.Tensor, model, loss,
                                 enc: Encoder) -> None:
    """Loss values to 1e-6; after backward, every backbone and head gradient (1e-6 / 1e-4)."""
    assert ours.item() == pytest.approx(ref.item(), abs=1e-6)
    ours.backward()
    ref.backward()
    g_st = grads(model[0].auto_model.named_parameters())
    g_ref = grads(enc.backbone.named_parameters())
    assert g_st and set(g_st) <= set(g_ref)
    for n, g in g_st.items():
        torch.testing.assert_close(g, g_ref[n], atol=1e-6, rtol=1e-4, msg=n)
    if loss.head is not None:
        ref_head = dict(enc.head.named_parameters())
        for n, p in loss.head.named_parameters():
            torch.testing.assert_close(p.grad, ref_head[n].grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("mlp", [True, False])
def test_loss_equals_csekit_objective(st_folder: Path, name: str, mlp: bool) -> None:
    model, loss, enc = pair(st_folder, mlp, name)
    objective = build_objective(name, **HPARAMS[name])
    assert type(loss.objective) is type(objective)
    for step in range(3):  # ClusterNS: step 0 starts clustering, steps 1-2 use the centroids
        batch = sentences(8, seed=step)
        for p in list(loss.parameters()) + list(enc.parameters()):
            p.grad = None
        ours = loss(st_features(model, batch), None)
        ref = csekit_loss(enc, objective, batch)
        assert_same_losses_and_grads(ours, ref, model, loss, enc)
        if name.startswith("clusterns"):
            assert loss.objective.started and objective.started
            torch.testing.assert_close(loss.objective.centroids, objective.centroids,
                                       atol=1e-6, rtol=0)


def test_loss_is_the_objective_code_path(st_folder: Path) -> None:
    """``.objective`` is what runs: replacing its forward changes the loss."""
    model, loss, _ = pair(st_folder, True, "simcse")
    batch = sentences(6, seed=1)
    seen = []
    original = loss.objective.forward

    def spy(z1, z2):
        seen.append((z1.shape, z2.shape))
        return original(z1, z2)

    loss.objective.forward = spy
    loss(st_features(model, batch), None)
    assert seen == [(torch.Size([6, 32]), torch.Size([6, 32]))]


def test_two_forward_passes_give_two_dropout_masks(st_folder: Path) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(st_folder), device="cpu")
    model.train()
    loss = SimCSELoss(model, mlp=False)
    z1, z2 = loss.embed(st_features(model, sentences(4, seed=2)))
    assert not torch.allclose(z1, z2)  # dropout 0.1: the two views differ
    model.eval()
    z1, z2 = loss.embed(st_features(model, sentences(4, seed=2)))
    torch.testing.assert_close(z1, z2)


def test_head_is_optimised_by_the_st_trainer_and_not_saved(st_folder: Path, tmp_path: Path) -> None:
    """The installed trainer optimises loss.named_parameters(): the head's are in the optimiser,
    the centroids (buffers) are not, and the saved model has no head."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments

    from csekit.st import SentenceTransformerTrainer

    model = SentenceTransformer(str(st_folder), device="cpu")
    loss = ClusterNSLoss(model, n_clusters=2)
    s = sentences(8, seed=3)
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "o"), max_steps=1,
                                                per_device_train_batch_size=4, report_to=[],
                                                use_cpu=True, save_strategy="no")
    trainer = SentenceTransformerTrainer(model=model, args=args, loss=loss,
                                         train_dataset=Dataset.from_dict({"a": s, "p": s}))
    trainer.create_optimizer()
    in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in loss.head.parameters())
    assert all(id(b) not in in_opt for b in loss.objective.buffers())
    assert not any(True for _ in loss.objective.parameters())
    model.save(str(tmp_path / "saved"))
    saved = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    assert sum(p.numel() for p in saved.parameters()) == sum(p.numel() for p in model.parameters())
    assert "head" not in {n.split(".")[0] for n, _ in saved.named_parameters()}


def test_config_dict_and_citation() -> None:
    class Dummy(nn.Module):
        def get_sentence_embedding_dimension(self) -> int:
            return 8

    cfg = ClusterNSFocalLoss(Dummy(), n_clusters=16, margin=0.25).get_config_dict()
    assert cfg["objective"] == "clusterns-focal" and cfg["n_clusters"] == 16
    assert cfg["margin"] == 0.25 and cfg["temperature"] == 0.05 and cfg["mlp"] is True
    assert cfg["init"] == "greedy_chain" and "loss" not in cfg
    assert "Clustering-Aware Negative Sampling" in ClusterNSLoss(Dummy()).citation
    assert "Focal-{I}nfo{NCE}" in FocalInfoNCELoss(Dummy()).citation
    assert "{S}im{CSE}" in SimCSELoss(Dummy()).citation
    with pytest.raises(ConfigError, match="do not apply"):
        SimCSELoss(Dummy(), margin=0.3)
    with pytest.raises(ConfigError, match="2 columns"):
        SimCSELoss(Dummy()).embed([{}])


def test_state_dict_round_trip_excludes_model(st_folder: Path) -> None:
    model, loss, _ = pair(st_folder, True, "clusterns")
    loss(st_features(model, sentences(8, seed=0)), None)
    state = loss.loss_state_dict()
    assert set(state) == {"head.dense.weight", "head.dense.bias", "objective.clusters.centroids",
                          "objective.clusters.started"}
    other = copy.deepcopy(loss)
    other.objective = build_objective("clusterns", **HPARAMS["clusterns"])
    assert not other.objective.started
    other.load_loss_state_dict(state)
    assert other.objective.started
    torch.testing.assert_close(other.objective.centroids, loss.objective.centroids)
    with pytest.raises(ConfigError, match="does not fit"):
        SimCSELoss(model).load_loss_state_dict(state)


@pytest.mark.parametrize("name", ["simcse", "clusterns-focal"])  # InfoNCE / focal+cluster cores
def test_three_columns_equal_csekit_supervised_path(st_folder: Path, name: str) -> None:
    """(anchor, positive, hard negative) columns == csekit's supervised path: one
    ``tokenize_views`` batch of 3B rows through the encoder, split into z1, z2, z3, and the
    objective with ``hard_negative_weight``. Loss and backbone/head gradients to 1e-6."""
    from csekit.data import tokenize_views

    hp = {**HPARAMS[name], "hard_negative_weight": 0.7}
    model, loss, enc = pair(st_folder, True, name)
    loss = LOSSES[name](model, mlp=True, **hp)
    enc.head.load_state_dict(loss.head.state_dict())
    objective = build_objective(name, **hp)
    prep = getattr(model, "preprocess", None) or model.tokenize
    for step in range(2):  # ClusterNS: step 0 starts clustering, step 1 uses the centroids
        a, p, n = (sentences(8, seed=10 * step + k) for k in range(3))
        for q in list(loss.parameters()) + list(enc.parameters()):
            q.grad = None
        ours = loss([dict(prep(a)), dict(prep(p)), dict(prep(n))], None)
        inputs = tokenize_views(enc.tokenizer, list(zip(a, p, n)), max_seq_len=128)
        z1, z2, z3 = split_views(enc(**inputs), 3)
        ref = objective(z1, z2, z3).loss
        assert_same_losses_and_grads(ours, ref, model, loss, enc)
    # the hard negatives really enter the loss: without the third column there are B
    # candidates per row instead of 2B (near log(B+1) against log(2B+1) for this tiny model)
    pairs_only = loss([dict(prep(a)), dict(prep(p))], None)
    assert ours.item() - pairs_only.item() > 0.3

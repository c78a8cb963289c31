"""ClusterNS inside sentence-transformers' trainer: clustering starts, the centroids and the
train-only head go into the checkpoints, and a resume (into another output folder) ends with
the centroids, head and model of the uninterrupted run. sentence-transformers' own trainer,
resumed the same way, does not (the control that shows why csekit.st ships a subclass).
Also: the model card sentence-transformers generates names the loss and cites the paper.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("sentence_transformers")
pytest.importorskip("datasets")

from csekit.modeling.encoder import Encoder
from csekit.st import LOSS_STATE_FILE, ClusterNSLoss, SentenceTransformerTrainer

WORDS = ["the", "city", "river", "album", "song", "was", "released", "in", "a", "new", "team",
         "film", "school", "north", "south", "church", "village", "game", "one", "two", "known"]
OPTS = {"n_clusters": 4, "kmeans_start_cosine": 1.0, "kmeans_lr": 0.1, "bml_weight": 0.1,
        "alpha": 0.1, "beta": 0.3, "seed": 3}


@pytest.fixture(scope="module")
def st_folder(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("st-tiny-trainer") / "model"
    Encoder.from_pretrained(str(tiny_bert_dir), pooler="cls_before_pooler", mlp="none").save(out)
    return out


def dataset(n: int = 48):
    from datasets import Dataset

    rng = random.Random(0)
    s = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))) for _ in range(n)]
    return Dataset.from_dict({"anchor": s, "positive": s})


def run(st_folder: Path, out: Path, *, resume: str | None = None, head_seed: int = 0,
        trainer_cls=SentenceTransformerTrainer, max_steps: int = 6):
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments

    model = SentenceTransformer(str(st_folder), device="cpu")
    torch.manual_seed(head_seed)  # the head's fresh init: must not matter after a resume
    loss = ClusterNSLoss(model, **OPTS)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=8,
        learning_rate=5e-4, save_strategy="steps", save_steps=3, logging_steps=3,
        report_to=[], use_cpu=True, seed=7, disable_tqdm=True, dataloader_drop_last=True)
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset(), loss=loss)
    trainer.train(resume_from_checkpoint=resume)
    return model, loss, trainer


def test_clusterns_checkpoint_and_resume_into_another_folder(st_folder: Path,
                                                             tmp_path: Path) -> None:
    model_a, loss_a, _ = run(st_folder, tmp_path / "a")
    assert loss_a.objective.started
    ck = tmp_path / "a" / "checkpoint-3"
    saved = load_file(str(ck / LOSS_STATE_FILE))
    assert bool(saved["objective.clusters.started"])  # clustering started before step 3
    assert saved["objective.clusters.centroids"].shape == (4, 32)
    assert saved["objective.clusters.centroids"].dtype == torch.float32
    assert {"head.dense.weight", "head.dense.bias"} <= set(saved)
    # the centroids moved after the checkpoint: the resume has something to reproduce
    assert not torch.allclose(saved["objective.clusters.centroids"], loss_a.objective.centroids)

    model_b, loss_b, _ = run(st_folder, tmp_path / "b", resume=str(ck), head_seed=123)
    assert (tmp_path / "b" / "checkpoint-6" / LOSS_STATE_FILE).is_file()
    assert not (tmp_path / "b" / "checkpoint-3").exists()
    torch.testing.assert_close(loss_b.objective.centroids, loss_a.objective.centroids,
                               atol=1e-6, rtol=0)
    for (n, p), (_, q) in zip(loss_a.head.named_parameters(), loss_b.head.named_parameters()):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=0, msg=n)
    for (n, p), (_, q) in zip(model_a.named_parameters(), model_b.named_parameters()):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=0, msg=n)

    # Control: sentence-transformers' own trainer restores the model and the optimiser only.
    from sentence_transformers import SentenceTransformerTrainer as Stock

    _, loss_c, _ = run(st_folder, tmp_path / "c", resume=str(ck), head_seed=123, trainer_cls=Stock)
    assert not torch.allclose(loss_c.objective.centroids, loss_a.objective.centroids, atol=1e-4)


def test_resume_before_clustering_started(st_folder: Path, tmp_path: Path) -> None:
    """A checkpoint written before the start restores 'not started' (empty centroids)."""
    from sentence_transformers import SentenceTransformer

    from csekit.st import save_loss_state

    loss = ClusterNSLoss(SentenceTransformer(str(st_folder), device="cpu"), **OPTS)
    save_loss_state(loss, tmp_path)
    state = load_file(str(tmp_path / LOSS_STATE_FILE))
    assert not bool(state["objective.clusters.started"])
    assert state["objective.clusters.centroids"].numel() == 0
    from csekit.st import load_loss_state

    assert load_loss_state(loss, tmp_path) and not loss.objective.started


def test_generated_model_card_names_the_loss_and_cites_the_paper(st_folder: Path,
                                                                  tmp_path: Path) -> None:
    model, _, _ = run(st_folder, tmp_path / "card", max_steps=1)
    model.save(str(tmp_path / "saved"))
    card = (tmp_path / "saved" / "README.md").read_text(encoding="utf-8")
    assert "csekit.st.losses.ClusterNSLoss" in card
    assert "loss:ClusterNSLoss" in card
    assert "Clustering-Aware Negative Sampling for Unsupervised Sentence Representation" in card
    assert "SimCSE: Simple Contrastive Learning" in card.replace("{S}im{CSE}", "SimCSE")
    assert '"n_clusters": 4' in card and '"objective": "clusterns"' in card

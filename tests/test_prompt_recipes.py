"""The prompt recipes parse, validate and carry the published values (PromptBERT's run.sh, the
ClusterNS README table), with the unpublished focal-prompt one flagged."""

from __future__ import annotations

from pathlib import Path

import pytest

from csekit.modeling.representation.prompt import DEFAULT_TEMPLATES
from csekit.training import TrainConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "prompt"
PUBLISHED = {
    "simcse-prompt-bert-base": {"batch_size": 256, "learning_rate": 1e-5},
    "simcse-prompt-roberta-base": {"batch_size": 256, "learning_rate": 1e-5},
    "clusterns-prompt-bert-base": {"batch_size": 512, "learning_rate": 5e-5, "n_clusters": 96,
                                       "kmeans_lr": 5e-4, "kmeans_start_cosine": 0.4, "bml_weight": 1e-2,
                                       "bml_alpha": 0.0, "bml_beta": 0.2, "hard_negatives": True},
    "clusterns-prompt-bert-large": {"batch_size": 256, "learning_rate": 3e-5, "n_clusters": 96,
                                        "kmeans_lr": 1e-4, "kmeans_start_cosine": 0.2, "bml_weight": 5e-4,
                                        "bml_alpha": 0.25, "bml_beta": 0.3, "hard_negatives": True},
    "clusterns-prompt-roberta-base": {"batch_size": 512, "learning_rate": 5e-5, "n_clusters": 128,
                                          "kmeans_lr": 1e-3, "kmeans_start_cosine": 0.4,
                                          "bml_weight": 1e-2, "bml_alpha": 0.2, "bml_beta": 0.6,
                                          "hard_negatives": False},
    "focal-prompt-bert-base": {"margin": 0.3},
}


SUPERVISED = {"sup-simcse-prompt-bert-base": "bert", "sup-simcse-prompt-roberta-base": "roberta"}


def test_all_prompt_recipes_present() -> None:
    assert {p.stem for p in RECIPES.glob("*.yaml")} == set(PUBLISHED) | set(SUPERVISED)


@pytest.mark.parametrize("name", sorted(SUPERVISED))
def test_supervised_prompt_recipe(name: str) -> None:
    """PromptBERT run.sh sup-bert / sup-roberta: NLI triplets, one template (T1) for all three
    sentences, denoising in training and at test, the head kept; batch 4 x 128, lr 5e-5, 3
    epochs; the BERT recipe flags its head deviation (org_mlp)."""
    path = RECIPES / f"{name}.yaml"
    cfg = TrainConfig.from_yaml(path)
    cfg.validate(world_size=1)
    family = SUPERVISED[name]
    assert (cfg.objective, cfg.supervision, cfg.pooler, cfg.mlp) == (
        "simcse", "triplets", "prompt", "always")
    assert (cfg.batch_size, cfg.learning_rate, cfg.epochs, cfg.max_seq_len, cfg.temperature) == (
        512, pytest.approx(5e-5), 3, 32, 0.05)
    assert cfg.prompt_denoise and cfg.prompt_eval_denoise and cfg.prompt_eval_period
    assert cfg.prompt_template == DEFAULT_TEMPLATES[family][0] and cfg.prompt_template2 is None
    assert cfg.prompt_config().templates == (DEFAULT_TEMPLATES[family][0],)
    if family == "bert":
        assert "DEVIATION" in path.read_text() and "org_mlp" in path.read_text()


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_prompt_recipe(name: str) -> None:
    path = RECIPES / f"{name}.yaml"
    cfg = TrainConfig.from_yaml(path)
    cfg.validate(world_size=1)
    assert cfg.objective == name.split("-prompt-")[0]
    assert (cfg.pooler, cfg.mlp, cfg.max_seq_len, cfg.epochs, cfg.temperature) == (
        "prompt", "train", 32, 1, 0.05)
    assert cfg.prompt_denoise and not cfg.prompt_eval_denoise and cfg.prompt_eval_period
    family = "roberta" if "roberta" in name else "bert"
    assert (cfg.prompt_template, cfg.prompt_template2) == DEFAULT_TEMPLATES[family]
    assert cfg.prompt_positions == ("reference" if family == "roberta" else "model")
    for field, value in PUBLISHED[name].items():
        assert getattr(cfg, field) == pytest.approx(value), field
    text = path.read_text()
    if name.startswith("focal"):
        assert "NOT a published" in text
    if name == "clusterns-prompt-bert-base":  # the script / README disagreements are flagged
        assert "run_prompt.sh" in text and "overwrites" in text

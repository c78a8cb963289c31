"""recipes/backbones/: every recipe parses and validates, every value says where it comes from
(and the ones no paper publishes for that backbone say so), and the values taken from a source
are that source's (SimCSE's in REFERENCE.md; LLM2Vec's released SimCSE config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from csekit.training import TrainConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "backbones"
EXPECTED = {
    "simcse-modernbert-base": ("answerdotai/ModernBERT-base",
                               {"batch_size": 64, "learning_rate": 3e-5, "dropout": 0.1}),
    "simcse-deberta-v3-base": ("microsoft/deberta-v3-base",
                               {"batch_size": 64, "learning_rate": 3e-5, "dropout": 0.1}),
    "simcse-xlm-roberta-base": ("FacebookAI/xlm-roberta-base",
                                {"batch_size": 512, "learning_rate": 1e-5, "dropout": 0.1}),
    # LLM2Vec train_configs/simcse/MetaLlama3.json + run_simcse.py (alpha = 2 r, dropout 0.05)
    "simcse-qwen3-0.6b-lora": ("Qwen/Qwen3-0.6B",
                               {"batch_size": 128, "learning_rate": 3e-5, "dropout": 0.3,
                                "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
                                "max_seq_len": 128, "max_steps": 1000, "pooler": "last",
                                "gradient_checkpointing": True, "precision": "bf16"}),
}
SOURCE_FREE = {"model", "output_dir", "objective", "train_file", "data_dir"}


def test_the_four_backbone_recipes_exist() -> None:
    assert {p.stem for p in RECIPES.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_backbone_recipe(name: str) -> None:
    path = RECIPES / f"{name}.yaml"
    cfg = TrainConfig.from_yaml(path)
    cfg.validate(world_size=1)
    model, values = EXPECTED[name]
    assert cfg.model == model and cfg.objective == "simcse" and cfg.temperature == 0.05
    for key, value in values.items():
        assert getattr(cfg, key) == pytest.approx(value), key
    if cfg.lora_r is not None:
        assert cfg.lora_settings().alpha == 32
    family = {"simcse-modernbert-base": "ModernBERT", "simcse-deberta-v3-base": "DeBERTa-v3",
              "simcse-xlm-roberta-base": "XLM-R", "simcse-qwen3-0.6b-lora": "Qwen3-0.6B"}[name]
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key = line.split(":", 1)[0].strip()
        if key in SOURCE_FREE:
            continue
        assert "#" in line, f"{name}: {key} says nothing about its source"
        comment = line.split("#", 1)[1]
        # values carried over from another model are flagged
        if key in values and key not in ("pooler", "gradient_checkpointing", "precision"):
            assert f"not published for {family}" in comment, f"{name}: {key} not flagged"

"""Shared test fixtures: where ../shared lives, and a tiny random BERT saved with a real tokenizer.

Tests never download anything: HF_HUB_OFFLINE is forced here as well as in CI.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Corpus indexes of the tests go to a throw-away folder, not to ~/.cache/csekit.
if "CSEKIT_CACHE" not in os.environ:
    os.environ["CSEKIT_CACHE"] = tempfile.mkdtemp(prefix="csekit-test-cache-")
    atexit.register(shutil.rmtree, os.environ["CSEKIT_CACHE"], True)

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    """``$CSEKIT_SHARED`` or ``<repo>/../shared``."""
    return Path(os.environ.get("CSEKIT_SHARED", REPO_ROOT.parent / "shared")).resolve()


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (set CSEKIT_SHARED)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _require(shared_root(), "shared folder")


@pytest.fixture(scope="session")
def senteval_dir() -> Path:
    """The folder that contains ``downstream/`` (SentEval layout)."""
    return _require(shared_root() / "data" / "senteval", "SentEval data")


@pytest.fixture(scope="session")
def wiki_corpus() -> Path:
    return _require(shared_root() / "data" / "corpus" / "wiki_en_sentences.txt", "wiki corpus")


@pytest.fixture(scope="session")
def bert_mini_dir() -> Path:
    return _require(shared_root() / "models" / "bert-mini-wiki-mlm", "bert-mini-wiki-mlm")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, bert_mini_dir: Path) -> Path:
    """A tiny random BERT (2 layers, width 32) with bert-mini's real WordPiece tokenizer.

    Built once per test session from a config; saved as a plain Hugging Face folder
    (safetensors + tokenizer), the way a user's local model looks.
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(str(bert_mini_dir))
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def families(tmp_path_factory: pytest.TempPathFactory, bert_mini_dir: Path, wiki_corpus: Path):
    """Tiny random models of every backbone family (tests/backbone_families.py), each built
    once per session on first use: ``families.build("modernbert")`` -> its folder."""
    from backbone_families import FamilyBuilder

    return FamilyBuilder(tmp_path_factory.mktemp("families"), bert_mini_dir, wiki_corpus)

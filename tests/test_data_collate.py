"""tokenize_pairs layout: rows 2i and 2i+1 are sentence i, each as the tokenizer encodes it alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from csekit.data import split_views, tokenize_pairs
from csekit.errors import ConfigError

SENTENCES = [
    "A man is playing a guitar.",
    "short",
    "An extraordinarily long sentence that certainly needs more than eight word pieces to encode.",
]


@pytest.fixture(scope="module")
def tokenizer(bert_mini_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bert_mini_dir))


def test_pair_layout_matches_single_encoding(tokenizer) -> None:
    max_len = 8
    batch = tokenize_pairs(tokenizer, SENTENCES, max_len)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    n, length = batch["input_ids"].shape
    assert n == 2 * len(SENTENCES) and length <= max_len
    for tensor in batch.values():
        assert tensor.shape == (n, length)
    for i, sentence in enumerate(SENTENCES):
        alone = tokenizer(sentence, truncation=True, max_length=max_len)["input_ids"]
        for row in (2 * i, 2 * i + 1):
            mask = batch["attention_mask"][row].bool()
            assert batch["input_ids"][row][mask].tolist() == alone
            assert int(mask.sum()) == len(alone)
            assert mask[: len(alone)].all()  # right padding
    assert int(batch["attention_mask"].sum(1).max()) == length  # padded to the longest only


def test_default_max_seq_len_is_32(tokenizer) -> None:
    batch = tokenize_pairs(tokenizer, ["word " * 100])
    assert batch["input_ids"].shape == (2, 32)


def test_split_views() -> None:
    z = torch.arange(12.0).reshape(6, 2)  # 3 sentences x 2 views
    z1, z2 = split_views(z)
    assert torch.equal(z1, z[[0, 2, 4]]) and torch.equal(z2, z[[1, 3, 5]])
    with pytest.raises(ValueError):
        split_views(torch.zeros(3, 2))


def test_bad_arguments(tokenizer) -> None:
    with pytest.raises(ConfigError):
        tokenize_pairs(tokenizer, [], 32)
    with pytest.raises(ConfigError):
        tokenize_pairs(tokenizer, ["x"], 1)

"""Switch-case positive augmentation (Wang et al. 2022, CARDS): the positive view of a sentence
is the sentence with the case of the first letter of randomly chosen words flipped.

Every word (a maximal run of non-space characters) is chosen independently with probability
``p``; a chosen word whose first character has two cases (``c.upper() != c.lower()``) gets it
flipped, the rest of the text (other characters, the exact whitespace) is kept.

The choice is a pure function of (seed, epoch, batch index, the sentence's text): no generator
state to save, so a resumed run draws exactly what the uninterrupted run drew, and the draw
does not depend on which process holds the sentence (2 processes == 1). Two equal sentences of
one batch get the same flips.

The method only makes sense for a cased tokenizer: an uncased one (bert-base-uncased,
all-MiniLM-L6-v2) lowercases the text and the positive view equals the anchor;
:func:`tokenizer_is_cased` tells which, and training refuses the option for an uncased one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

_WORDS = re.compile(r"\S+")


def switch_case(text: str, p: float, rng: np.random.Generator) -> str:
    """``text`` with the first letter of each word flipped with probability ``p`` (one draw
    per word, in order, from ``rng``; words without a cased first letter still take a draw)."""
    words = list(_WORDS.finditer(text))
    if not words or p <= 0:
        return text
    chosen = rng.random(len(words)) < p
    out = list(text)
    for match, pick in zip(words, chosen):
        c = out[match.start()]
        if pick and c.upper() != c.lower():
            out[match.start()] = c.lower() if c.isupper() else c.upper()
    return "".join(out)


def sentence_rng(seed: int, epoch: int, batch: int, text: str) -> np.random.Generator:
    """The generator of one sentence's draw: keyed by the run's seed, the data position and the
    sentence's text (see the module docstring)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return np.random.default_rng([seed, epoch, batch, int.from_bytes(digest, "little")])


def switch_case_pairs(sentences: Sequence[str], p: float, *, seed: int, epoch: int,
                      batch: int) -> list[tuple[str, str]]:
    """(anchor, switch-cased positive) rows of one local batch."""
    return [(s, switch_case(s, p, sentence_rng(seed, epoch, batch, s))) for s in sentences]


def tokenizer_is_cased(tokenizer: Any) -> bool:
    """Whether the tokenizer tells 'Paris' from 'paris' (False for an uncased WordPiece)."""
    a = tokenizer("Paris Hello", add_special_tokens=False)["input_ids"]
    b = tokenizer("paris hello", add_special_tokens=False)["input_ids"]
    return list(a) != list(b)


__all__ = ["sentence_rng", "switch_case", "switch_case_pairs", "tokenizer_is_cased"]

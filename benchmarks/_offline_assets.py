"""Models and sentences made on the spot, for machines that have nothing but the libraries.

A GPU machine for ``benchmarks/gpu_check.sh`` has torch, transformers, accelerate and
sentence-transformers, but no hub access, no shared data and no packaged model. This builds a
WordPiece tokenizer from a generated vocabulary of pseudo-words, random-weight BERT models of
any shape with it, and sentences of those words. Deterministic in ``seed``.
"""

from __future__ import annotations

import random
from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_ONSETS = ["b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
           "br", "ch", "st", "tr", "pl", "gr", "sh", "th"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
_CODAS = ["", "n", "r", "s", "t", "l", "nd", "st", "ng"]


def pseudo_words(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct pronounceable lower-case words."""
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        syll = rng.randint(1, 3)
        w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syll))
        out[w + rng.choice(_CODAS)] = None
    return list(out)


def sentences(n: int, words: list[str], *, min_words: int = 6, max_words: int = 40,
              seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(min_words, max_words)))
            for _ in range(n)]


def save_tokenizer(dest: Path, words: list[str]) -> None:
    """A BERT WordPiece tokenizer (lower case) whose vocabulary is ``words`` + characters."""
    from transformers import BertTokenizerFast

    dest.mkdir(parents=True, exist_ok=True)
    chars = sorted({c for w in words for c in w})
    vocab = list(dict.fromkeys(SPECIALS + [".", ","] + chars + [f"##{c}" for c in chars]
                               + words))
    (dest / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = None
    try:  # transformers 5: the vocabulary as a dict
        from transformers import BertTokenizer

        tok = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
        if len(tok) != len(vocab):
            tok = None
    except (TypeError, ValueError):
        tok = None
    if tok is None:  # transformers 4: a vocab file
        tok = BertTokenizerFast(vocab_file=str(dest / "vocab.txt"), do_lower_case=True)
    if len(tok) != len(vocab):
        raise RuntimeError(f"tokenizer has {len(tok)} entries, expected {len(vocab)}")
    tok.save_pretrained(str(dest))


def save_bert(dest: Path, *, words: list[str], seed: int = 0, **config: object) -> Path:
    """A random-weight BertModel (``BertConfig(**config)``; default: bert-base's shape) with the
    pseudo-word tokenizer, saved as a plain Hugging Face folder (safetensors)."""
    import torch
    from transformers import BertConfig, BertModel

    save_tokenizer(dest, words)
    n_vocab = len((dest / "vocab.txt").read_text(encoding="utf-8").splitlines())
    cfg = BertConfig(**{"vocab_size": max(n_vocab, 128), **config})
    torch.manual_seed(seed)
    BertModel(cfg).save_pretrained(str(dest), safe_serialization=True)
    return dest


def save_tiny_bert(dest: Path, seed: int = 0) -> Path:
    """2 layers, width 32: the shape of the test suite's tiny BERT."""
    return save_bert(dest, words=pseudo_words(400, seed), seed=seed, hidden_size=32,
                     num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=128)

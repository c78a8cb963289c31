"""Tokenising collators: each sentence twice (unsupervised), or 2-3 views per row (supervised).

Layout (the same as SimCSE's unsupervised training, which stacks ``[x, x]`` per example and
flattens): for a batch of B sentences the tensors have 2B rows and **rows 2i and 2i+1 are both
sentence i**. One forward pass in train mode then applies two independent dropout masks, and
the two views are ``z[0::2]`` and ``z[1::2]`` (:func:`split_views`). Sharding a global batch
across processes must therefore cut the *sentence* list (rank r takes sentences r*b:(r+1)*b)
before calling :func:`tokenize_pairs`, so a pair never straddles two processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from csekit.errors import ConfigError


def tokenize_pairs(tokenizer: Any, sentences: Sequence[str], max_seq_len: int = 32, *,
                   prompt: Any = None) -> dict[str, torch.Tensor]:
    """Tokenise ``sentences`` once and repeat each row twice.

    With ``prompt`` (the encoder's :class:`~csekit.modeling.representation.prompt.PromptPooling`), row 2i is
    sentence i in the view-1 template (T1) and row 2i+1 in the view-2 one (T2), and a
    ``prompt_template`` (2B,) tensor says which; ``max_seq_len`` then counts sentence tokens.

    Padding is to the longest sentence of the batch, truncation to ``max_seq_len`` tokens
    (special tokens included). Returns ``input_ids``, ``attention_mask`` and, when the tokenizer
    produces them, ``token_type_ids``.

    Shape: every tensor (2B, L) with L <= max_seq_len; rows 2i and 2i+1 are sentence i.
    """
    if max_seq_len < 2:
        raise ConfigError(f"max_seq_len must be >= 2 (room for special tokens), got {max_seq_len}")
    if len(sentences) == 0:
        raise ConfigError("tokenize_pairs needs at least one sentence")
    if prompt is not None:
        return prompt.pairs(list(sentences), max_seq_len)
    enc = tokenizer(list(sentences), padding="longest", truncation=True, max_length=max_seq_len,
                    return_tensors="pt")
    return {k: v.repeat_interleave(2, dim=0) for k, v in enc.items()
            if k in ("input_ids", "attention_mask", "token_type_ids")}


def tokenize_views(tokenizer: Any, rows: Sequence[Sequence[str]],
                   max_seq_len: int = 32) -> dict[str, torch.Tensor]:
    """Tokenise rows of n texts (supervised pairs / NLI triplets) as one batch of n*B rows.

    Row ``n*i + k`` is text k of example i (sent0, sent1[, hard_neg]), the layout SimCSE's
    supervised training uses (it flattens ``(B, n, L)`` into ``(B*n, L)``), so ONE forward pass
    encodes every view and :func:`split_views` with ``n`` recovers them. All rows are padded to
    the longest of the batch and truncated to ``max_seq_len`` tokens.

    Shape: every tensor (n*B, L) with L <= max_seq_len.
    """
    if max_seq_len < 2:
        raise ConfigError(f"max_seq_len must be >= 2 (room for special tokens), got {max_seq_len}")
    if len(rows) == 0:
        raise ConfigError("tokenize_views needs at least one row")
    n = len(rows[0])
    if n < 2 or any(len(r) != n for r in rows):
        raise ValueError(f"every row needs the same number (>= 2) of texts, got {n} first")
    flat = [text for row in rows for text in row]
    enc = tokenizer(flat, padding="longest", truncation=True, max_length=max_seq_len,
                    return_tensors="pt")
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def split_views(z: torch.Tensor, n: int = 2) -> tuple[torch.Tensor, ...]:
    """Split the encoder output of a :func:`tokenize_pairs` (n = 2) or :func:`tokenize_views`
    batch into its n views.

    Shape: z (n*B, d) -> n tensors (B, d); view k row i is ``z[n*i + k]``.
    """
    if n < 1 or z.shape[0] % n:
        raise ValueError(f"expected a multiple of {n} rows ({n} views), got {z.shape[0]}")
    return tuple(z[k::n] for k in range(n))

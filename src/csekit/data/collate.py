"""Tokenising collator for unsupervised contrastive training: each sentence twice, interleaved.

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

    With ``prompt`` (the encoder's :class:`~csekit.modeling.prompt.PromptPooling`), row 2i is
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


def split_views(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the encoder output of a :func:`tokenize_pairs` batch into its two views.

    Shape: z (2B, d) -> z1 (B, d), z2 (B, d); z1[i] and z2[i] are the two views of sentence i.
    """
    if z.shape[0] % 2:
        raise ValueError(f"expected an even number of rows (pairs), got {z.shape[0]}")
    return z[0::2], z[1::2]

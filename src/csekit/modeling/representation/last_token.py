"""Decoder LLMs as encoders: last-token pooling, the EOS it reads, and which poolers fit.

A causal decoder's token i sees tokens 0..i only, so the only position that has read the whole
sentence is the last one. ``last`` pooling takes the hidden state of each row's last real token
(the last position where the attention mask is 1, so left and right padding give the same
row), and, as e5-mistral and Qwen3-Embedding do, that token is an EOS appended to every
sentence: :func:`ensure_eos` makes the tokenizer append it (a post-processor step, so the
tokenizer saved with the model, and sentence-transformers loading it, append it too).

``cls`` / ``cls_before_pooler`` read position 0, which in a causal decoder has seen only
itself; :func:`check_pooler_fits_architecture` refuses them there.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from csekit.errors import ConfigError

FIRST_TOKEN_POOLERS = frozenset({"cls", "cls_before_pooler"})


def is_causal(backbone: nn.Module) -> bool:
    """Whether the backbone's attention is causal (a decoder LLM not switched to bidirectional).

    transformers marks each attention module with ``is_causal``.
    """
    return any(getattr(m, "is_causal", False) is True for m in backbone.modules())


def last_token(last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The state at each row's last position whose mask is 1 (left or right padding).

    Shape: last_hidden (B, L, H), attention_mask (B, L) -> (B, H).
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    idx = (attention_mask.to(torch.bool) * (positions + 1)).argmax(dim=1)
    rows = torch.arange(last_hidden.shape[0], device=last_hidden.device)
    return last_hidden[rows, idx.to(last_hidden.device)]


def _probe_ids(tokenizer: Any) -> list[int]:
    return list(tokenizer(["a"], return_attention_mask=False,
                          return_token_type_ids=False)["input_ids"][0])


def appends_eos(tokenizer: Any) -> bool:
    """Whether the tokenizer ends every text with its EOS token."""
    eos = getattr(tokenizer, "eos_token_id", None)
    return eos is not None and _probe_ids(tokenizer)[-1:] == [eos]


def ensure_eos(tokenizer: Any) -> bool:
    """Make a fast tokenizer append its EOS token to every text (after its own special tokens);
    returns whether it had to be changed. ConfigError without an EOS token or a fast tokenizer.

    The EOS is added by the tokenizer's post-processor, so truncation keeps room for it and
    ``save_pretrained`` writes it into ``tokenizer.json``.
    """
    eos_id = getattr(tokenizer, "eos_token_id", None)
    eos = getattr(tokenizer, "eos_token", None)
    if eos_id is None or not eos:
        raise ConfigError("pooler 'last' reads the EOS token appended to each sentence, and "
                          "this tokenizer has no EOS token; use --pooler avg")
    if appends_eos(tokenizer):
        return False
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError("pooler 'last' needs a fast (tokenizers) tokenizer to append the EOS "
                          "token; this one is not")
    from tokenizers import processors

    add = processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A $B:1 {eos}:1",
                                        special_tokens=[(eos, int(eos_id))])
    old = backend.post_processor
    backend.post_processor = add if old is None else processors.Sequence([old, add])
    if not appends_eos(tokenizer):  # pragma: no cover - a post-processor that reorders
        raise ConfigError("could not make this tokenizer append its EOS token")
    return True


def check_pooler_fits_architecture(pooler: str, backbone: nn.Module) -> None:
    """One line where the pooler cannot work on this architecture (first-token poolers on a
    causal decoder)."""
    if pooler in FIRST_TOKEN_POOLERS and is_causal(backbone):
        raise ConfigError(
            f"pooler {pooler!r} reads the first token, which in a causal decoder "
            f"({type(backbone).__name__}) has seen only itself; use --pooler last, avg or "
            "prompteol")


__all__ = ["FIRST_TOKEN_POOLERS", "appends_eos", "check_pooler_fits_architecture",
           "ensure_eos", "is_causal", "last_token"]

"""Sentence poolers as SimCSE's evaluation defines them, and the SimCSE MLP head.

Poolers (``hidden_states`` are the backbone's per-layer outputs, index 0 = embeddings):

* ``cls``: the [CLS] state passed through a Linear+Tanh head: csekit's MLP head when the
  encoder has one, else the backbone's own pre-trained pooler (``pooler_output`` of a raw BERT).
* ``cls_before_pooler``: the last layer's [CLS] state, no head.
* ``avg``: mean of the last layer over non-padding tokens.
* ``avg_first_last``: mean over tokens of (hidden_states[1] + hidden_states[-1]) / 2, i.e. the
  first *transformer layer* and the last one, as SimCSE's current ``evaluation.py`` does (early
  versions of that script used hidden_states[0], the embedding output).
* ``avg_top2``: mean over tokens of (hidden_states[-2] + hidden_states[-1]) / 2.
* ``last``: the last real token's state (last position of the attention mask, so left and right
  padding agree), an EOS the tokenizer appends: decoder LLMs (e5-mistral, Qwen3-Embedding);
  :mod:`csekit.modeling.representation.last_token`.
* ``prompt``: PromptBERT's last-layer state at the mask token of a template holding the sentence
  (:mod:`csekit.modeling.representation.prompt`: templates, tokenisation, template denoising).
* ``prompteol``: PromptEOL, the decoder analogue: the state of the template's last token.
"""

from __future__ import annotations

import torch
from torch import nn

from csekit.errors import ConfigError
from csekit.modeling.representation.last_token import last_token

POOLERS: tuple[str, ...] = ("cls", "cls_before_pooler", "avg", "avg_first_last", "avg_top2",
                             "last", "prompt", "prompteol")
PROMPT_POOLERS: frozenset[str] = frozenset({"prompt", "prompteol"})
MLP_MODES: tuple[str, ...] = ("train", "always", "none")
HIDDEN_STATE_POOLERS: frozenset[str] = frozenset({"avg_first_last", "avg_top2"})


def check_pooler_fits(pooler: str, head: nn.Module | None, backbone: nn.Module,
                      backbone_pooler_trained: bool) -> None:
    """A one-line error where the pooler cannot run on this backbone (and head)."""
    if pooler == "cls" and head is None:
        if not backbone_pooler_trained:
            raise ConfigError(
                "pooler 'cls' would use the backbone's pooler, whose weights are not in the "
                "checkpoint (randomly initialised); use --pooler cls_before_pooler")
        if getattr(backbone, "pooler", None) is None:
            raise ConfigError(
                f"pooler 'cls' needs a pooler layer, and {type(backbone).__name__} has none; "
                "use --pooler cls_before_pooler or an MLP head")
    if pooler in HIDDEN_STATE_POOLERS and int(backbone.config.num_hidden_layers) < 2:
        raise ConfigError(f"pooler {pooler!r} needs a backbone with at least 2 layers")


class MLPHead(nn.Module):
    """SimCSE's projection head: Linear(H, H) + Tanh.

    Shape: (B, H) -> (B, H).
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(x))


def masked_mean(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``states`` over the positions where ``attention_mask`` is 1.

    Shape: states (B, L, H), attention_mask (B, L) -> (B, H).
    """
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


def pool_tokens(
    pooler: str,
    last_hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    hidden_states: tuple[torch.Tensor, ...] | None = None,
) -> torch.Tensor:
    """Pool token states into one vector per sentence, WITHOUT any head.

    ``cls`` returns the [CLS] state here (the head is applied by the caller).

    Shape: last_hidden (B, L, H), attention_mask (B, L), hidden_states n_layers+1 x (B, L, H)
    -> (B, H).
    """
    if pooler in ("cls", "cls_before_pooler"):
        return last_hidden[:, 0]
    if pooler == "avg":
        return masked_mean(last_hidden, attention_mask)
    if pooler == "last":
        return last_token(last_hidden, attention_mask)
    if pooler in HIDDEN_STATE_POOLERS:
        if hidden_states is None or len(hidden_states) < 3:
            raise ValueError(f"pooler {pooler!r} needs the hidden states of at least 2 layers")
        first = hidden_states[1] if pooler == "avg_first_last" else hidden_states[-2]
        return masked_mean((first + hidden_states[-1]) / 2.0, attention_mask)
    if pooler in PROMPT_POOLERS:
        raise ValueError("the prompt poolers need their templates: use PromptPooling.pool")
    raise ValueError(f"unknown pooler {pooler!r}; choose one of {', '.join(POOLERS)}")

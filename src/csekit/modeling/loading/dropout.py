"""Dropout that reaches the model: ``--dropout`` sets every dropout knob of the backbone.

SimCSE's two views of a sentence are two dropout masks, so a backbone whose dropout is 0 (or
set only in part) gives views that are the same tensor, and training learns nothing from them.
Architectures name their dropouts differently: BERT ``hidden_dropout_prob`` and
``attention_probs_dropout_prob``; ModernBERT ``embedding_dropout``, ``mlp_dropout`` and
``attention_dropout`` (all 0.0 by default); decoder LLMs (Llama, Qwen, Gemma) only
``attention_dropout``; Phi-3 and NomicBERT's hub code ``*_pdrop``; T5 ``dropout_rate``.

The rule (:func:`dropout_knobs`): every number-valued attribute of the model's config whose name
contains ``dropout`` or ends in ``pdrop``, except the knobs of task heads that an encoder never
runs (:data:`HEAD_ONLY_PREFIXES`: ``classifier_dropout``, ``pooler_dropout`` (DeBERTa's
classification pooler), ``summary_last_dropout``, ...). ``tests/test_backbones.py`` checks per
architecture that after :func:`set_dropout` every dropout of the built model (each
``nn.Dropout`` and each attention module's dropout rate) has the requested value.

:func:`views_differ` is the start check of training that makes its views by dropout: two
train-mode forwards of one small batch must differ.
"""

from __future__ import annotations

import re
from typing import Any

import torch

# Config knobs of heads on top of the backbone (classification, QA, summary, DeBERTa's
# ContextPooler): csekit loads the bare backbone, which never reads them.
HEAD_ONLY_PREFIXES: tuple[str, ...] = ("classifier_", "pooler_", "summary_", "qa_",
                                       "seq_classif_", "cls_")
_KNOB = re.compile(r"dropout|pdrop$")

# The sentences of the start check (short, distinct, any tokenizer).
_PROBE = ["a short probe sentence for the dropout check .", "another one , with more words"]


def dropout_knobs(config: Any) -> list[str]:
    """Names of the config attributes that set the backbone's dropout rates (see module doc)."""
    names = []
    for key, value in sorted(config.to_dict().items()):
        if not _KNOB.search(key) or key.startswith(HEAD_ONLY_PREFIXES):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            names.append(key)
    return names


def set_dropout(config: Any, p: float) -> list[str]:
    """Set every dropout knob of ``config`` to ``p``; returns the knobs set."""
    knobs = dropout_knobs(config)
    for key in knobs:
        setattr(config, key, float(p))
    return knobs


def dropout_settings(config: Any) -> str:
    """``name=value, ...`` of the config's dropout knobs ('no dropout settings' if none)."""
    knobs = dropout_knobs(config)
    if not knobs:
        return "no dropout settings in its config"
    return ", ".join(f"{k}={getattr(config, k)}" for k in knobs)


def views_differ(encoder: Any) -> bool:
    """Whether two train-mode forwards of one small batch give different embeddings.

    Runs the encoder as training does (train mode, its own forward, whatever speed settings
    are on) under a forked RNG, so the run's random stream is not moved; gradients are off and
    the mode is restored.
    """
    inputs = encoder.tokenize(_PROBE, 16)
    device = next(encoder.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    was_training = encoder.training
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            encoder.train()
            a = encoder(**inputs)
            b = encoder(**inputs)
    finally:
        encoder.train(was_training)
    return not torch.equal(a, b)


__all__ = ["HEAD_ONLY_PREFIXES", "dropout_knobs", "dropout_settings", "set_dropout",
           "views_differ"]

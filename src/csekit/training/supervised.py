"""The trainer's side of supervised NLI training (issue #14): data mode and view layout.

The training file decides the mode (:func:`csekit.data.triplets.resolve_supervision`):

* ``unsupervised``: one sentence a line; each sentence is tokenised once and repeated (rows
  2i, 2i+1), so the two dropout masks of one forward pass make the positive pair;
* ``pairs``: (sent0, sent1) rows; z1 = f(sent0), z2 = f(sent1), in-batch negatives only;
* ``triplets``: (sent0, sent1, hard_neg) rows; z3 = f(hard_neg) is the hard-negative view.

In the supervised modes all texts of the local shard go through ONE forward pass (rows
``n*i + k``, :func:`csekit.data.tokenize_views`), so dropout, autocast and DDP behave exactly as
in unsupervised training; the views are split and handed to ``objective(z1, z2[, z3])``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import torch

from csekit.data import split_views, tokenize_pairs, tokenize_views
from csekit.errors import ConfigError
from csekit.training.config import TrainConfig

logger = logging.getLogger(__name__)

N_VIEWS = {"unsupervised": 2, "pairs": 2, "triplets": 3}
_DESCRIBE = {
    "unsupervised": "unsupervised: each sentence twice, two dropout views",
    "pairs": "supervised pairs: anchor {0}, positive {1}, in-batch negatives",
    "triplets": "supervised triplets: anchor {0}, positive {1}, hard negative {2}",
}


def record_mode(config: TrainConfig, mode: str, columns: Sequence[str] = ()) -> TrainConfig:
    """``config`` with ``supervision`` set to the mode chosen from the data (saved with the run);
    logs the choice; ConfigError when hard_negative_weight is set without hard negatives."""
    if config.hard_negative_weight != 0 and mode != "triplets":
        raise ConfigError(f"hard_negative_weight={config.hard_negative_weight} needs triplets "
                          f"(a hard-negative column); {config.train_file} gives {mode}")
    logger.info("training mode: %s (%s)", mode,
                _DESCRIBE[mode].format(*columns) + f"; from {config.train_file}")
    return dataclasses.replace(config, supervision=mode)


def tokenize_batch(tokenizer: Any, local: Sequence[Any], mode: str,
                   max_seq_len: int, *, prompt: Any = None) -> dict[str, torch.Tensor]:
    """Token tensors of one local shard: (2b, L) unsupervised, (n*b, L) supervised.

    ``prompt``: the encoder's prompt pooling. Unsupervised: view 1 in template T1, view 2 in
    T2 (see :func:`csekit.data.tokenize_pairs`). Supervised: the anchor in T1, the positive and
    the hard negative in T2, or every text in T1 when one template is set, as PromptBERT's
    supervised setting does (:meth:`~csekit.modeling.representation.prompt.PromptPooling.views`)."""
    if mode == "unsupervised":
        return tokenize_pairs(tokenizer, local, max_seq_len, prompt=prompt)
    if prompt is not None:
        return prompt.views(local, max_seq_len)
    return tokenize_views(tokenizer, local, max_seq_len)


def views(z: torch.Tensor, mode: str) -> tuple[torch.Tensor, ...]:
    """(z1, z2) or (z1, z2, z3) from the encoder output of :func:`tokenize_batch`'s rows."""
    return split_views(z, N_VIEWS[mode])


__all__ = ["N_VIEWS", "record_mode", "tokenize_batch", "views"]

"""Loading refuses what it would silently drop.

``transformers`` loads a checkpoint into the class its config names and reports the weights that
did not fit: *unexpected* ones (in the file, not in the model: dropped) and *missing* ones (in
the model, not in the file: randomly initialised). Some of that is expected and harmless:

* the weights of a head on top of the backbone that csekit does not run (a masked-LM or
  next-sentence head, ``cls.*``, ``lm_head.*``, ELECTRA's ``discriminator_predictions.*``, a
  classifier): unexpected keys whose top-level name is not a module or weight of the backbone;
* BERT's pooler when the checkpoint has none (``pooler.*`` missing; csekit then does not use it,
  see :func:`csekit.modeling.representation.pooling.check_pooler_fits`);
* position-id buffers (``*.position_ids``), which the model rebuilds.

Anything else means the checkpoint and the model class disagree about the architecture, for
example a BERT checkpoint with relative position embeddings (transformers' ``BertModel`` has no
weights for them, drops them and runs it as an absolute-position model). That is a one-line
:class:`~csekit.errors.ModelLoadError` naming the first few keys.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from torch import nn

from csekit.errors import ModelLoadError

logger = logging.getLogger(__name__)

SHOWN_KEYS = 3


def _buffer_or_pooler(key: str) -> bool:
    return key.endswith("position_ids") or key.startswith("pooler.")


def head_key(backbone: nn.Module, key: str) -> bool:
    """Whether ``key`` lies outside the backbone's module tree (a task head's weight)."""
    top = key.split(".", 1)[0]
    children = dict(backbone.named_children())
    own = {n for n, _ in backbone.named_parameters(recurse=False)} | \
        {n for n, _ in backbone.named_buffers(recurse=False)}
    return top not in children and top not in own


def _show(keys: list[str]) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def check_loading_info(backbone: nn.Module, info: dict[str, Any], name: str) -> None:
    """Raise :class:`ModelLoadError` for weights ``transformers`` dropped or left random.

    ``info``: the ``output_loading_info`` of ``from_pretrained`` (``missing_keys``,
    ``unexpected_keys``, ``mismatched_keys``).
    """
    missing = sorted(k for k in _keys(info, "missing_keys") if not _buffer_or_pooler(k))
    unexpected_all = sorted(_keys(info, "unexpected_keys"))
    heads = [k for k in unexpected_all if head_key(backbone, k) or k.endswith("position_ids")]
    unexpected = [k for k in unexpected_all if k not in set(heads)]
    mismatched = sorted(str(k[0] if isinstance(k, (tuple, list)) else k)
                        for k in _keys(info, "mismatched_keys"))
    kind = type(backbone).__name__
    if unexpected or missing or mismatched:
        parts = []
        if unexpected:
            parts.append(f"{len(unexpected)} weight(s) {kind} has no place for and would drop "
                         f"({_show(unexpected)})")
        if missing:
            parts.append(f"{len(missing)} weight(s) of {kind} missing from the checkpoint that "
                         f"would start random ({_show(missing)})")
        if mismatched:
            parts.append(f"{len(mismatched)} weight(s) of the wrong shape ({_show(mismatched)})")
        raise ModelLoadError(
            f"{name} does not fit transformers' {kind}: " + "; ".join(parts) + ". The checkpoint "
            "was trained with another architecture (e.g. relative position embeddings, or a "
            "model that needs --trust-remote-code); csekit will not train or encode with it")
    if heads:
        logger.info("%s: %d weight(s) of a task head not used by the encoder (%s)", name,
                    len(heads), _show(heads))


def _keys(info: dict[str, Any], field: str) -> Iterable[Any]:
    return info.get(field) or ()


__all__ = ["check_loading_info", "head_key"]

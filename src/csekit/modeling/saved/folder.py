"""The folder csekit writes for an encoder: a sentence-transformers folder (modules.json, the
backbone's config and safetensors, the tokenizer), the MLP head, ``csekit.json`` (pooling, head,
versions and the caller's metadata) and the model card. One atomic swap replaces the folder's
model files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import save_file
from torch import nn

from csekit.atomic import atomic_dir
from csekit.modeling.hf import library_versions, quiet_transformers
from csekit.modeling.representation.instruction import instruction_of
from csekit.modeling.representation.pooling import PROMPT_POOLERS
from csekit.modeling.representation.prompt import PromptPooling
from csekit.modeling.saved.model_card import CARD_FILE, build_model_card
from csekit.modeling.saved.st_format import write_st_modules

logger = logging.getLogger(__name__)

CSEKIT_META = "csekit.json"
HEAD_FILE = "csekit_head.safetensors"
FORMAT_VERSION = 1


class SavableEncoder(Protocol):
    """What :func:`write_encoder_folder` reads of an encoder."""

    backbone: nn.Module
    tokenizer: Any
    head: nn.Module | None
    pooler: str
    mlp: str
    max_seq_len: int
    normalize: bool
    prompt: PromptPooling | None

    @property
    def eval_pooler(self) -> str: ...

    @property
    def uses_head_at_eval(self) -> bool: ...

    @property
    def hidden_size(self) -> int: ...

    def backbone_for_saving(self) -> contextlib.AbstractContextManager[nn.Module]: ...


def prompt_metadata(prompt: PromptPooling) -> dict[str, Any]:
    """The prompt settings with the templates and denoising resolved (what csekit.json stores)."""
    return {**prompt.config.to_dict(), "templates": list(prompt.templates),
            "denoise": prompt.denoise}


def write_encoder_folder(enc: SavableEncoder, path: str | os.PathLike[str],
                         metadata: dict[str, Any] | None = None, *,
                         extra: Callable[[Path], None] | None = None) -> None:
    """Atomically write ``enc`` as a sentence-transformers folder (+ csekit.json, + the head).

    ``metadata`` (training config, objective, evaluation results, ...) is stored in
    ``csekit.json`` next to the pooling description and library versions; ``extra(folder)``
    writes further files into the folder before it is swapped in (a LoRA adapter).
    """
    versions = library_versions()
    with atomic_dir(path) as tmp, quiet_transformers():
        with enc.backbone_for_saving() as backbone:
            backbone.save_pretrained(tmp, safe_serialization=True)
            # (a head the evaluation uses: csekit's, or the raw backbone pooler of ``cls``)
            raw_pooler = None if enc.head is not None else getattr(backbone, "pooler", None)
            raw_dense = getattr(raw_pooler, "dense", None)
        enc.tokenizer.save_pretrained(tmp)
        head_state: dict[str, torch.Tensor] | None = None
        if enc.head is not None:
            head_state = {k: v.detach().float().cpu().contiguous()
                          for k, v in enc.head.state_dict().items()}
            save_file(head_state, str(tmp / HEAD_FILE))
        eval_head: dict[str, torch.Tensor] | None = None
        if enc.uses_head_at_eval:
            if head_state is not None:
                eval_head = head_state
            else:  # raw backbone pooler (e.g. BERT's) used by ``cls``
                assert raw_dense is not None
                eval_head = {"dense.weight": raw_dense.weight, "dense.bias": raw_dense.bias}
        prompt = enc.prompt
        eval_pooler = {"cls": "cls_before_pooler", **dict.fromkeys(PROMPT_POOLERS, "prompt")
                       }.get(enc.eval_pooler, enc.eval_pooler)
        instruction = instruction_of(enc.tokenizer)
        write_st_modules(
            tmp, eval_pooler=eval_pooler, hidden_size=enc.hidden_size,
            num_layers=int(enc.backbone.config.num_hidden_layers), max_seq_len=enc.max_seq_len,
            head_state=eval_head, versions=versions, normalize=enc.normalize,
            prompt=prompt.st_config(enc.max_seq_len) if prompt is not None else None,
            instruction=instruction)
        if extra is not None:
            extra(tmp)
        meta = {
            "format_version": FORMAT_VERSION,
            "pooler": enc.pooler,
            "mlp": enc.mlp,
            "eval_pooler": enc.eval_pooler,
            "head_at_eval": enc.uses_head_at_eval,
            "max_seq_len": enc.max_seq_len,
            "normalize": enc.normalize,
            **({"instruction": instruction} if instruction else {}),
            "versions": versions,
            **({"prompt": prompt_metadata(prompt)} if prompt is not None else {}),
            **(metadata or {}),
        }
        (tmp / CSEKIT_META).write_text(json.dumps(meta, indent=2, default=str) + "\n",
                                       encoding="utf-8")
        # (issue 16) the model card, from the same metadata
        (tmp / CARD_FILE).write_text(build_model_card(json.loads(json.dumps(meta, default=str))),
                                     encoding="utf-8")
    logger.info("saved encoder to %s", path)


__all__ = ["CSEKIT_META", "FORMAT_VERSION", "HEAD_FILE", "SavableEncoder", "prompt_metadata",
           "write_encoder_folder"]

"""The folder csekit writes for an encoder: a sentence-transformers folder (modules.json, the
backbone's config and safetensors, the tokenizer), the MLP head, ``csekit.json`` (pooling, head,
versions and the caller's metadata), the model card and ``.csekit-model-files.json`` (the names
of the model's own entries).

Saving into a folder that holds nothing else (or does not exist) is one atomic swap. Saving into
a folder that holds other files too (the user's notes, a training run's ``checkpoints/``) never
removes them, as sentence-transformers writes into an existing folder: the model is written
complete into ``<folder>/.csekit-save-next`` (atomic) and then moved in entry by entry
(:func:`csekit.atomic.merge_dir`); the previous save's entries that the new model lacks (listed
in the manifest) are removed, nothing else. A file of the user's with the name of a model file
(``README.md``, ``config.json``, ...) is overwritten, as sentence-transformers does. A kill
during that move leaves the complete staging folder as a journal; the next save into the folder
finishes it first.
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

from csekit.atomic import atomic_dir, merge_dir, read_manifest, write_manifest
from csekit.modeling.hf import library_versions, quiet_transformers
from csekit.modeling.representation.instruction import instruction_of
from csekit.modeling.representation.pooling import PROMPT_POOLERS
from csekit.modeling.representation.prompt import PromptPooling
from csekit.modeling.saved.model_card import CARD_FILE, build_model_card
from csekit.modeling.saved.st_format import (
    PROMPT_CONFIG_FILE,
    PROMPT_MODULE_FILE,
    write_st_modules,
)

logger = logging.getLogger(__name__)

CSEKIT_META = "csekit.json"
HEAD_FILE = "csekit_head.safetensors"
FORMAT_VERSION = 1
MODEL_MANIFEST = ".csekit-model-files.json"  # the names of the model's own entries
SAVE_STAGING = ".csekit-save-next"  # Encoder.save into a folder with other files
BEST_STAGING = ".best-next"  # the trainer's best model (csekit.training.model_io)
STAGING_NAMES = (SAVE_STAGING, BEST_STAGING)
# Names only csekit writes: the previous model's entries in a folder saved before the manifest
LEGACY_OWNED = (CSEKIT_META, HEAD_FILE, PROMPT_MODULE_FILE, PROMPT_CONFIG_FILE)


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


def model_entries(folder: Path) -> list[str] | None:
    """The model's own entries in ``folder`` (its manifest), None for a folder without one."""
    return read_manifest(folder, MODEL_MANIFEST)


def legacy_owned(folder: Path) -> tuple[str, ...]:
    """Entries to treat as the previous model's in a csekit folder saved before the manifest."""
    return LEGACY_OWNED if (folder / CSEKIT_META).is_file() else ()


def holds_other_files(folder: Path) -> bool:
    """True when ``folder`` has an entry that is not the previous save's model (the manifest)."""
    if not folder.is_dir():
        return False
    if folder.is_symlink():  # a swap would replace the link itself: write into its target
        return True
    own = set(model_entries(folder) or ()) | {MODEL_MANIFEST}
    return any(name not in own for name in os.listdir(folder))


def finish_interrupted_save(folder: Path) -> None:
    """Complete a save into ``folder`` that a kill interrupted while moving entries in."""
    for name in STAGING_NAMES:
        stage = folder / name
        if not stage.is_dir() or stage.is_symlink():
            continue
        if (stage / MODEL_MANIFEST).is_file() or (stage / "modules.json").is_file():
            logger.warning("finishing the interrupted save of the model in %s", folder)
            merge_dir(stage, folder, manifest=MODEL_MANIFEST, owned=legacy_owned(folder))


def write_encoder_folder(enc: SavableEncoder, path: str | os.PathLike[str],
                         metadata: dict[str, Any] | None = None, *,
                         extra: Callable[[Path], None] | None = None) -> None:
    """Write ``enc`` as a sentence-transformers folder (+ csekit.json, + the head).

    ``metadata`` (training config, objective, evaluation results, ...) is stored in
    ``csekit.json`` next to the pooling description and library versions; ``extra(folder)``
    writes further files into the staged folder before it goes in (a LoRA adapter). Atomic in
    an empty or new folder; in a folder with other files, the model's entries are replaced and
    nothing else is removed (module docstring).
    """
    dst = Path(path).absolute()
    if holds_other_files(dst):
        finish_interrupted_save(dst)
        with atomic_dir(dst / SAVE_STAGING) as tmp:
            _write_files(enc, tmp, metadata, extra)
        merge_dir(dst / SAVE_STAGING, dst, manifest=MODEL_MANIFEST, owned=legacy_owned(dst))
    else:
        with atomic_dir(dst) as tmp:
            _write_files(enc, tmp, metadata, extra)
    logger.info("saved encoder to %s", path)


def _write_files(enc: SavableEncoder, tmp: Path, metadata: dict[str, Any] | None,
                 extra: Callable[[Path], None] | None = None) -> None:
    """Every file of the model into the empty folder ``tmp``, the manifest last."""
    versions = library_versions()
    with quiet_transformers():
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
    write_manifest(tmp, MODEL_MANIFEST)


__all__ = ["BEST_STAGING", "CSEKIT_META", "FORMAT_VERSION", "HEAD_FILE", "MODEL_MANIFEST",
           "SAVE_STAGING", "STAGING_NAMES", "SavableEncoder", "finish_interrupted_save",
           "holds_other_files", "legacy_owned", "model_entries", "prompt_metadata",
           "write_encoder_folder"]

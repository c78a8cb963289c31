"""``SentenceTransformerTrainer`` that also checkpoints the state of csekit's losses.

sentence-transformers' own trainer saves and restores only the model (``_save`` and
``_load_from_checkpoint`` in ``sentence_transformers/base/trainer.py``, 6.2), so after
``trainer.train(resume_from_checkpoint=...)`` a csekit loss would start again with a fresh MLP
head (whose Adam moments *are* restored, because the head is in the optimiser) and with
clustering not started. This subclass, with the same constructor, writes the loss state next to
the optimiser state and reads it back where the optimiser is read back:

- ``_save_optimizer_and_scheduler(checkpoint)`` (called for every checkpoint that can be
  resumed, i.e. unless ``save_only_model``) also writes ``csekit_loss_state.safetensors``
  (:meth:`csekit.st.losses.CsekitLoss.loss_state_dict`, atomically, main process only);
- ``_load_optimizer_and_scheduler(checkpoint)`` (called only when resuming, on every process,
  with the checkpoint path the user gave) also loads it. The path is the checkpoint's own, so
  resuming into another ``output_dir`` works the same way.

Loading the best model at the end (``load_best_model_at_end``) does not touch the loss state:
training is over and the loss keeps the state of the last step. With several losses (a dict),
each csekit loss is saved under its dataset name.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformerTrainer as _STTrainer

from csekit.atomic import fsync_dir, temp_name
from csekit.errors import ConfigError
from csekit.st.losses import CsekitLoss

logger = logging.getLogger(__name__)

LOSS_STATE_FILE = "csekit_loss_state.safetensors"


def _csekit_losses(loss: Any) -> dict[str, CsekitLoss]:
    if isinstance(loss, dict):
        return {str(k): v for k, v in loss.items() if isinstance(v, CsekitLoss)}
    return {"": loss} if isinstance(loss, CsekitLoss) else {}


def save_loss_state(loss: Any, checkpoint: str | os.PathLike[str]) -> Path | None:
    """Write the state of every csekit loss in ``loss`` (a module or a dict) atomically."""
    losses = _csekit_losses(loss)
    if not losses:
        return None
    tensors: dict[str, torch.Tensor] = {}
    for name, fn in losses.items():
        for key, value in fn.loss_state_dict().items():
            tensors[f"{name}/{key}" if name else key] = value.detach().cpu().contiguous()
    meta = {"format": "1", "losses": json.dumps({n: type(f).__name__ for n, f in losses.items()})}
    path = Path(checkpoint) / LOSS_STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temp_name(path.name))
    save_file(tensors, str(tmp), metadata=meta)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def load_loss_state(loss: Any, checkpoint: str | os.PathLike[str]) -> bool:
    """Restore the state written by :func:`save_loss_state`; False if the checkpoint has none."""
    losses = _csekit_losses(loss)
    path = Path(checkpoint) / LOSS_STATE_FILE
    if not losses:
        return False
    if not path.is_file():
        logger.warning("%s has no %s (written by csekit.st.SentenceTransformerTrainer): the "
                       "csekit loss starts with a fresh MLP head and clustering not started",
                       checkpoint, LOSS_STATE_FILE)
        return False
    state = load_file(str(path))
    for name, fn in losses.items():
        prefix = f"{name}/" if name else ""
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} \
            if prefix else {k: v for k, v in state.items() if "/" not in k}
        if not part:
            raise ConfigError(f"{path} holds no state for the loss {name or type(fn).__name__}")
        fn.load_loss_state_dict(part)  # (load_state_dict copies onto each tensor's device)
    logger.info("restored the csekit loss state from %s", path)
    return True


class SentenceTransformerTrainer(_STTrainer):
    """sentence-transformers' trainer (same constructor) that checkpoints csekit loss state:
    the train-only MLP head and the ClusterNS centroids, restored by
    ``train(resume_from_checkpoint=...)``, also into another ``output_dir``."""

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            save_loss_state(self.loss, output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            load_loss_state(self.loss, checkpoint)


__all__ = ["LOSS_STATE_FILE", "SentenceTransformerTrainer", "load_loss_state", "save_loss_state"]

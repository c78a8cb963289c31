"""Resumable checkpoints under ``output_dir/checkpoints/step-N/``, written atomically.

A checkpoint folder holds:

- ``model.safetensors``: the whole trainable encoder (backbone + MLP head), safetensors only;
- ``optimizer.pt``, ``scheduler.pt``: optimiser and schedule state (tensors and numbers);
- ``objective.pt``: the objective's state (ClusterNS centroids in fp32 and the started flag);
- ``rng.pt``: RNG states of every process (python, numpy, torch, cuda), one entry per rank;
- ``trainer_state.json``: step, data position (epoch, batches consumed in it), best score and
  step, evaluations without improvement, and the run's config.

Everything pickled is read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from csekit.atomic import atomic_dir, maybe_pause_mid_save, remove_stale_temps
from csekit.errors import TrainingError

logger = logging.getLogger(__name__)

STEP_RE = re.compile(r"^step-(\d+)$")


@dataclass
class TrainerState:
    """Counters that, with the RNG states, make a resumed run continue exactly."""

    step: int = 0  # optimiser steps done
    epoch: int = 0  # current epoch (0-based)
    batches_in_epoch: int = 0  # global batches consumed in the current epoch
    sentences_seen: int = 0
    best_score: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    skipped_nonfinite: int = 0
    finished: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)  # eval results

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step}"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of killed saves are ignored)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := STEP_RE.match(p.name)) and (p / "trainer_state.json").exists()]
    return [p for _, p in sorted(found)]


def save_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, objective: torch.nn.Module, rng_states: list[dict[str, Any]],
                    state: TrainerState, config: dict[str, Any]) -> None:
    """Write one checkpoint atomically (temp dir + fsync + rename)."""
    with atomic_dir(path) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        maybe_pause_mid_save(state.step)
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(_cpu_state(objective.state_dict()), tmp / "objective.pt")
        torch.save(rng_states, tmp / "rng.pt")
        payload = json.loads(state.to_json())
        payload["config"] = config
        (tmp / "trainer_state.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    logger.info("checkpoint written: %s", path)


def rotate_checkpoints(output_dir: Path, keep: int) -> None:
    """Keep the ``keep`` most recent checkpoints; remove older ones and stale temp folders."""
    remove_stale_temps(Path(output_dir) / "checkpoints")
    ckpts = list_checkpoints(output_dir)
    for old in ckpts[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise TrainingError(f"cannot read checkpoint file {path}: {type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}") from err


def load_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, objective: torch.nn.Module
                    ) -> tuple[TrainerState, list[dict[str, Any]], dict[str, Any]]:
    """Restore model/optimiser/scheduler/objective in place; return state, RNG states, config."""
    path = Path(path)
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    except Exception as err:
        raise TrainingError(f"cannot read {path / 'model.safetensors'}: {err}") from err
    if missing or unexpected:
        raise TrainingError(f"checkpoint {path} does not match the model "
                            f"(missing {len(missing)}, unexpected {len(unexpected)} tensors); "
                            f"resume with the same --model and options")
    optimizer.load_state_dict(_load(path / "optimizer.pt"))
    scheduler.load_state_dict(_load(path / "scheduler.pt"))
    objective.load_state_dict(_load(path / "objective.pt"))
    rng_states = _load(path / "rng.pt")
    payload = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    config = payload.pop("config", {})
    return TrainerState.from_dict(payload), rng_states, config


def _cpu_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}

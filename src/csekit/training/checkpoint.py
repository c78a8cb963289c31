"""Resumable checkpoints under ``output_dir/checkpoints/step-N/``, written atomically.

A checkpoint folder holds:

- ``model.safetensors``: the whole trainable encoder (backbone + MLP head), safetensors only;
  when part of the model is frozen (LoRA: the backbone's own weights), only the trainable
  tensors (adapters + head), since the frozen ones come unchanged from ``--model``;
- ``optimizer.pt``, ``scheduler.pt``: optimiser and schedule state (tensors and numbers);
- ``objective.pt``: the objective's state (ClusterNS centroids in fp32 and the started flag);
- ``rng.pt``: RNG states of every process (python, numpy, torch, cuda), one entry per rank;
- ``scaler.pt``: the fp16 gradient scaler's state (scale, growth tracker), fp16 runs only;
- ``trainer_state.json``: step, data position (epoch, batches consumed in it), best score and
  step, evaluations without improvement, and the run's config.

Everything pickled is read back with ``torch.load(weights_only=True)``.

Why not Accelerate's ``save_state`` / ``load_state``: its ``load_state`` reads the RNG files
and every ``register_for_checkpointing`` object with ``torch.load(weights_only=False)``, i.e.
unpickles arbitrary code from the checkpoint folder, and ``save_state`` writes into the final
folder in place (a kill mid-save leaves a half-written checkpoint that looks complete). This
format holds the same state (model, optimiser, schedule, scaler, objective, RNG of every rank),
loads with ``weights_only=True`` and is written atomically.

A full disk during a save, or an I/O error reading one back, is a one-line
:class:`~csekit.errors.CheckpointError` (exit 2) naming the bytes needed and the last good
checkpoint (:func:`disk_errors`); the previous checkpoint is intact.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from csekit.atomic import atomic_dir, maybe_pause_mid_save, remove_stale_temps
from csekit.errors import CheckpointError, CsekitError

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
    skipped_overflow: int = 0  # fp16 updates the gradient scaler skipped (not counted as steps)
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


def state_bytes(*states: Any) -> int:
    """Bytes of the tensors in (nested) state dicts / modules: what a save writes, near enough."""
    total = 0
    stack: list[Any] = list(states)
    while stack:
        x = stack.pop()
        if isinstance(x, torch.nn.Module):
            stack.extend(x.state_dict().values())
        elif isinstance(x, torch.Tensor):
            total += x.numel() * x.element_size()
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
    return total


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


_NO_SPACE_TEXT = ("no space left", "storagefull", "os error 28", "code: 28", "disk quota",
                  "enforce fail at inline_container", "file write failed")


def _is_no_space(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    text = str(err).lower()
    return any(t in text for t in _NO_SPACE_TEXT)


def _free_bytes(folder: Path) -> int | None:
    for p in (folder, *folder.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


@contextlib.contextmanager
def disk_errors(target: Path, *, needed: int, what: str, last_good: Path | None) -> Iterator[None]:
    """Turn a full disk while writing ``target`` into one :class:`CheckpointError` line.

    Checks the free space first (``needed`` bytes; nothing is written when it is short) and
    translates ENOSPC / EDQUOT / torch's zip-writer failure during the write. The message names
    the lack of space, the bytes needed and ``last_good``.
    """
    target = Path(target)
    kept = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint saved yet"

    def error(free: int | None) -> CheckpointError:
        has = f", {_human(free)} free" if free is not None else ""
        return CheckpointError(
            f"no space left on the device to save {what} to {target}: it needs about "
            f"{_human(needed)} ({needed} bytes){has}; {kept}; free some space (or lower "
            f"--save-total-limit, or use another --output-dir), then rerun with --resume")

    free = _free_bytes(target.parent)
    if free is not None and free < needed:
        raise error(free)
    try:
        yield
    except CsekitError:
        raise
    except (OSError, RuntimeError) as err:
        if _is_no_space(err):
            raise error(_free_bytes(target.parent)) from err
        raise


def last_checkpoint(output_dir: Path) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def save_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, objective: torch.nn.Module, rng_states: list[dict[str, Any]],
                    state: TrainerState, config: dict[str, Any], scaler: Any = None) -> None:
    """Write one checkpoint atomically (temp dir + fsync + rename).

    A full disk raises :class:`CheckpointError` (one line; the previous checkpoint stays).
    """
    path = Path(path)
    opt_state = optimizer.state_dict()
    needed = state_bytes(model, opt_state, objective) + 1_000_000  # + small files, zip headers
    with disk_errors(path, needed=needed, what=f"checkpoint step-{state.step}",
                     last_good=last_checkpoint(path.parent.parent)), atomic_dir(path) as tmp:
        save_model_tensors(model, tmp / "model.safetensors")
        torch.save(opt_state, tmp / "optimizer.pt")
        maybe_pause_mid_save(state.step)
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(_cpu_state(objective.state_dict()), tmp / "objective.pt")
        torch.save(rng_states, tmp / "rng.pt")
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / "scaler.pt")
        payload = json.loads(state.to_json())
        payload["config"] = config
        (tmp / "trainer_state.json").write_text(json.dumps(payload, indent=1),
                                                encoding="utf-8")
    logger.info("checkpoint written: %s", path)


def rotate_checkpoints(output_dir: Path, keep: int) -> None:
    """Keep the ``keep`` most recent checkpoints; remove older ones and stale temp folders."""
    remove_stale_temps(Path(output_dir) / "checkpoints")
    ckpts = list_checkpoints(output_dir)
    for old in ckpts[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def _why(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint file {path}: {_why(err)}") from err


def _restore(what: Path, fn: Any, value: Any) -> None:
    try:
        fn(value)
    except Exception as err:
        raise CheckpointError(f"checkpoint file {what} does not fit this run: {_why(err)}; "
                              f"resume with the same --model and options") from err


def load_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, objective: torch.nn.Module, scaler: Any = None
                    ) -> tuple[TrainerState, list[dict[str, Any]], dict[str, Any]]:
    """Restore model/optimiser/scheduler/objective (and the fp16 scaler) in place; return the
    state, RNG states and config. Any read error is one :class:`CheckpointError` line."""
    path = Path(path)
    try:
        missing, unexpected = load_model_tensors(model, path / "model.safetensors")
    except Exception as err:
        raise CheckpointError(f"cannot read {path / 'model.safetensors'}: {_why(err)}") from err
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not match the model "
                              f"(missing {len(missing)}, unexpected {len(unexpected)} tensors); "
                              f"resume with the same --model and options")
    _restore(path / "optimizer.pt", optimizer.load_state_dict, _load(path / "optimizer.pt"))
    _restore(path / "scheduler.pt", scheduler.load_state_dict, _load(path / "scheduler.pt"))
    _restore(path / "objective.pt", objective.load_state_dict, _load(path / "objective.pt"))
    if scaler is not None:
        if (path / "scaler.pt").is_file():
            _restore(path / "scaler.pt", scaler.load_state_dict, _load(path / "scaler.pt"))
        else:
            logger.warning("checkpoint %s has no fp16 scaler state (written by a run in another "
                           "precision?): the loss scale starts afresh", path)
    rng_states = _load(path / "rng.pt")
    try:
        payload = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path / 'trainer_state.json'}: {_why(err)}") from err
    config = payload.pop("config", {})
    return TrainerState.from_dict(payload), rng_states, config


_TRAINABLE = "trainable"  # safetensors metadata "tensors": only the trainable ones are stored


def save_model_tensors(model: torch.nn.Module, path: Path) -> None:
    """The model's weights into ``path``: all of them, or, when some are frozen, only the
    trainable ones (marked in the file's metadata)."""
    params = dict(model.named_parameters())
    if all(p.requires_grad for p in params.values()):
        save_model(model, str(path))
        return
    save_file({n: p.detach().contiguous() for n, p in params.items() if p.requires_grad},
              str(path), metadata={"format": "pt", "tensors": _TRAINABLE})


def load_model_tensors(model: torch.nn.Module, path: Path) -> tuple[list[str], list[str]]:
    """Load what :func:`save_model_tensors` wrote; (missing, unexpected) tensor names."""
    with safe_open(str(path), framework="pt") as f:
        trainable_only = (f.metadata() or {}).get("tensors") == _TRAINABLE
    if not trainable_only:
        return load_model(model, str(path), strict=False)
    state = load_file(str(path))
    want = {n for n, p in model.named_parameters() if p.requires_grad}
    result = model.load_state_dict(state, strict=False)
    return sorted(want - set(state)), list(result.unexpected_keys)


def _cpu_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}

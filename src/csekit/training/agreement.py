"""Decisions every process must share, made once and checked everywhere.

A multi-process run must never go on with processes that disagree: a node-local
``--output-dir`` (rank 0 writes checkpoints that the other nodes never see) would make each
node decide "fresh run" or "resume from step N" on its own and train on diverged weights.
Here rank 0 decides and broadcasts, and every process checks that what it sees matches; any
mismatch stops every process with the same one-line :class:`~csekit.errors.ConfigError`.
All functions are no-ops beyond rank 0's own checks in a single process.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from pathlib import Path

import torch

from csekit import distributed as D
from csekit.atomic import atomic_write_text
from csekit.errors import (
    CheckpointError,
    ConfigError,
    CsekitError,
    DataError,
    ModelLoadError,
    TrainingError,
    first_line,
)
from csekit.training.checkpoint import checkpoint_dir, list_checkpoints

logger = logging.getLogger(__name__)

# How long a process waits for rank 0's marker file to appear (network filesystems cache
# directory entries for a few seconds).
SHARED_WAIT_ENV = "CSEKIT_SHARED_DIR_WAIT_S"
_MARKER = ".csekit-shared-check-"


def _ranks_text(ranks: list[tuple[int, str]]) -> str:
    hosts = sorted({h for _, h in ranks})
    return (f"process(es) {', '.join(str(r) for r, _ in ranks)} on "
            f"{', '.join(hosts)}")


def raise_if_any(error: str | None) -> None:
    """Raise on every process the first error any process met (the same line everywhere)."""
    errors = [e for e in D.all_gather_object(error) if e]
    if errors:
        raise ConfigError(errors[0])


_SAME_CLASS = {cls.__name__: cls for cls in (CheckpointError, ConfigError, DataError,
                                             ModelLoadError, TrainingError)}


def agree_errors(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Run ``fn`` on every process; if it raises on any of them, raise the first such error's
    line on all (no process is left waiting in a collective, and every one ends with the same
    ``csekit: error:`` line).

    A CsekitError keeps its class (so its exit code) everywhere. Any other exception (a
    library error, a NaN check, a bug) on one process of a multi-process run becomes a
    :class:`TrainingError` naming the process and the exception's first line; that process
    logs the traceback first. In one process nothing is translated.
    """
    err: CsekitError | None = None
    try:
        out = fn(*args, **kwargs)
    except CsekitError as e:
        err, out = e, None
    except Exception as e:
        if not D.is_distributed():
            raise
        logger.exception("process %d: %s failed", D.rank(), getattr(fn, "__name__", "a step"))
        err = TrainingError(f"process {D.rank()} failed: {type(e).__name__}: {first_line(e)}")
        err.__cause__ = e
        out = None
    if not D.is_distributed():
        if err is not None:
            raise err
        return out
    msgs = D.all_gather_object(None if err is None else (type(err).__name__, str(err)))
    first = next((m for m in msgs if m), None)
    if first is not None:
        if err is not None and (type(err).__name__, str(err)) == tuple(first):
            raise err
        raise _SAME_CLASS.get(first[0], ConfigError)(first[1]) from err
    return out


def check_shared_output_dir(output_dir: Path, *, option: str = "--output-dir") -> None:
    """Rank 0 writes a marker into ``output_dir``; every process must read it back.

    Raises a one-line ConfigError on every process when some of them do not see it (a
    node-local folder on a multi-node job).
    """
    if not D.is_distributed():
        return
    rank = D.rank()
    token = D.broadcast_object(uuid.uuid4().hex if rank == 0 else None)
    marker = Path(output_dir) / f"{_MARKER}{token}"
    error = None
    if rank == 0:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(marker, token)
        except OSError as err:
            error = f"{option} {output_dir}: cannot write there ({err.strerror or err})"
    raise_if_any(error)
    wait = float(os.environ.get(SHARED_WAIT_ENV, "10"))
    end = time.monotonic() + wait
    sees = False
    while True:
        try:
            os.listdir(marker.parent)  # refreshes a network filesystem's cached entries
            sees = marker.read_text(encoding="utf-8") == token
        except OSError:
            sees = False
        if sees or time.monotonic() >= end:
            break
        time.sleep(0.5)
    seen = D.all_gather_object((sees, socket.gethostname()))
    D.barrier()
    if rank == 0:
        marker.unlink(missing_ok=True)
    blind = [(r, host) for r, (ok, host) in enumerate(seen) if not ok]
    if blind:
        raise ConfigError(
            f"{option} {output_dir} is not shared by all processes: {_ranks_text(blind)} do "
            f"not see the files process 0 writes there; on a multi-node job give a folder on "
            f"a filesystem every node mounts at the same path")


def agree_on_checkpoint(output_dir: Path, *, resume: bool) -> int | None:
    """The step of the checkpoint to resume from, chosen by rank 0, the same on all processes.

    None: start from scratch (no checkpoint). Raises (on every process) when the folder holds
    checkpoints and ``resume`` is off, or when some process does not see the chosen one.
    """
    if D.rank() == 0:
        ckpts = list_checkpoints(output_dir)
        step = int(ckpts[-1].name.split("-", 1)[1]) if ckpts else None
        error = None
        if ckpts and not resume:
            error = (f"--output-dir {output_dir} already holds checkpoints; pass --resume to "
                     f"continue that run or choose another directory")
        choice = (step, error)
    else:
        choice = None
    step, error = D.broadcast_object(choice)
    if error:
        raise ConfigError(error)
    if step is None or not resume:
        return None
    here = (checkpoint_dir(output_dir, step) / "trainer_state.json").is_file()
    seen = D.all_gather_object((here, socket.gethostname()))
    blind = [(r, host) for r, (ok, host) in enumerate(seen) if not ok]
    if blind:
        raise ConfigError(f"--resume: {_ranks_text(blind)} do not see checkpoint step-{step} "
                          f"that process 0 chose in {output_dir}; give an --output-dir on a "
                          f"filesystem every node shares")
    return step


def check_loaded_step(loaded: int, expected: int, device: torch.device) -> None:
    """Every process loaded the checkpoint of step ``expected``; else all stop."""
    bad = torch.tensor([0.0 if loaded == expected else 1.0], device=device)
    if D.all_reduce_sum_(bad).item() > 0:
        raise CheckpointError(f"--resume: the processes did not all load checkpoint step-"
                              f"{expected} (this one read step {loaded}); the checkpoint folder "
                              f"changed while loading, or is not shared; not training on "
                              f"diverged weights")


def agree_flags(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag set on ANY process, in one collective (the trainer's one per step)."""
    if not D.is_distributed():
        return list(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    D.all_reduce_sum_(t)
    return [bool(v > 0) for v in t.tolist()]


__all__ = ["SHARED_WAIT_ENV", "agree_errors", "agree_flags", "agree_on_checkpoint",
           "check_loaded_step", "check_shared_output_dir", "raise_if_any"]

"""Capture and restore every random number generator a training step touches.

States are stored as tensors and plain Python lists so that they load with
``torch.load(..., weights_only=True)`` (no pickled numpy objects).

On CUDA a process draws its dropout from the generator of ITS device; a checkpoint holds one
state per process (the Trainer gathers them, by rank) with the states of every device that
process saw and the index of its own (``cuda_device``). Restoring puts that own state on the
restoring process's current device, so rank r continues its stream even when the number of
visible devices per process changed (all GPUs visible to each process vs one each).
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


def get_rng_state() -> dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
        state["cuda_device"] = int(torch.cuda.current_device())  # this process's own
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((int(py[0]), tuple(int(x) for x in py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((str(name), keys.numpy().astype(np.uint32), int(pos), int(has_gauss),
                         float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        own = state.get("cuda_device")
        if own is not None and 0 <= int(own) < len(cuda_states):
            # the saving process's own generator continues on this process's device
            torch.cuda.set_rng_state(cuda_states[int(own)], device=torch.cuda.current_device())
        elif len(cuda_states) != torch.cuda.device_count():
            logger.warning("checkpoint from an older csekit without the device of each "
                           "process's RNG state, and %d GPUs visible instead of %d: device "
                           "0's state is used", torch.cuda.device_count(), len(cuda_states))
            torch.cuda.set_rng_state(cuda_states[0], device=torch.cuda.current_device())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def seed_dropout(seed: int, rank: int) -> None:
    """Seed the torch RNGs that dropout draws from with ``seed + rank``: each process gets its
    own masks (rank 0 the same as a single process). Data order and centroid initialisation
    use their own seeded generators and stay identical on every process."""
    torch.manual_seed(seed + rank)  # (all CUDA devices too)

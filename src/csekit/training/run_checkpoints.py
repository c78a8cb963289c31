"""The trainer's checkpoints: resuming a run from rank 0's chosen checkpoint, and writing one
(the trainer's ``_resume`` / ``_save_checkpoint`` call these; ``self`` is the
:class:`~csekit.training.trainer.Trainer`)."""

from __future__ import annotations

import logging
from typing import Any

from csekit import distributed as D
from csekit.training.agreement import agree_errors, check_loaded_step
from csekit.training.checkpoint import (
    checkpoint_dir,
    load_checkpoint,
    rotate_checkpoints,
    save_checkpoint,
)
from csekit.training.optim import raw_optimizer
from csekit.training.rng import get_rng_state, seed_everything, set_rng_state

logger = logging.getLogger(__name__)


def resume_run(self: Any) -> None:
    """Load the checkpoint rank 0 chose (the same step on every process) into the trainer:
    weights, optimiser, schedule, objective state, scaler, data position, and this process's
    RNG state (re-seeded per rank when the checkpoint was written by another number of
    processes, with a warning)."""
    if self._resume_step is None:  # rank 0's choice, the same on every process
        logger.warning("--resume: no checkpoint in %s/checkpoints; starting from scratch",
                       self.output_dir)
        return
    path = checkpoint_dir(self.output_dir, self._resume_step)
    state, rng_states, saved_cfg = agree_errors(
        load_checkpoint, path, model=self.accelerator.unwrap_model(self.model),
        optimizer=raw_optimizer(self.optimizer), scheduler=self.scheduler, objective=self.objective,
        scaler=self.accelerator.scaler)
    check_loaded_step(state.step, self._resume_step, self.accelerator.device)
    for key in ("model", "objective", "batch_size", "seed", "supervision"):
        if key in saved_cfg and saved_cfg[key] != getattr(self.config, key):
            logger.warning("resuming with %s=%r, the checkpoint was written with %r",
                           key, getattr(self.config, key), saved_cfg[key])
    self.state = state
    if len(rng_states) == self.world:
        set_rng_state(rng_states[self.rank])
    else:
        logger.warning("checkpoint has RNG states of %d processes, this run has %d: "
                       "dropout masks will differ from an uninterrupted run",
                       len(rng_states), self.world)
        seed_everything(self.config.seed + state.step + self.rank)
    logger.info("resumed from %s (step %d, epoch %d, batch %d of the epoch)", path,
                state.step, state.epoch, state.batches_in_epoch)


def save_run_checkpoint(self: Any) -> None:
    """A full checkpoint of the trainer's step (rank 0 writes it, every process's RNG state
    gathered into it); an error on rank 0 stops every process with the same line."""
    rng = get_rng_state()
    if D.is_distributed():
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, rng)
        rng_states = gathered
    else:
        rng_states = [rng]

    def save() -> None:
        if self.is_main:
            save_checkpoint(checkpoint_dir(self.output_dir, self.state.step),
                            model=self.accelerator.unwrap_model(self.model),
                            optimizer=self.optimizer, scheduler=self.scheduler,
                            objective=self.objective, rng_states=rng_states,
                            state=self.state, config=self.config.to_dict(),
                            scaler=self.accelerator.scaler)
            rotate_checkpoints(self.output_dir, self.config.save_total_limit)

    agree_errors(save)  # a full disk on rank 0 stops every process with the same line


__all__ = ["resume_run", "save_run_checkpoint"]

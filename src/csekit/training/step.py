"""One optimiser update: the micro-batches' forward and backward, the update's one collective
(a non-finite loss or a stop signal on any process), clipping, the optimiser and the schedule,
fp16 overflow and non-finite handling."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from csekit.errors import TrainingError
from csekit.objectives.base import read_scalars
from csekit.training.agreement import agree_flags
from csekit.training.checkpoint import TrainerState, list_checkpoints
from csekit.training.supervised import views

logger = logging.getLogger(__name__)

StepResult = tuple[float | None, dict[str, float], bool]  # (mean loss, stats, applied)


class UpdateStep:
    """``run(data, state)``: one update over ``grad_accum_steps`` global batches.

    ``take(item, state)`` turns a prepared item of ``data`` into device inputs (and records the
    data position); ``stop`` is the run's stop signal (its flag is agreed in the update's one
    collective, and :attr:`stop_agreed` keeps the agreed value).
    """

    def __init__(self, *, config: Any, accelerator: Any, model: Any, objective: Any,
                 optimizer: Any, scheduler: Any, world: int, output_dir: Path,
                 take: Callable[[Any, TrainerState], dict[str, torch.Tensor]]) -> None:
        self.config = config
        self.accelerator = accelerator
        self.model, self.objective = model, objective
        self.optimizer, self.scheduler = optimizer, scheduler
        self.world = world
        self.output_dir = output_dir
        self.take = take
        self.stop: Any = None
        self.stop_agreed = False

    def agree(self, nonfinite: bool) -> bool:
        """The update's ONE collective: a non-finite loss on any process, a stop signal on any
        process. Returns the first; keeps the second in :attr:`stop_agreed`."""
        stop = self.stop
        nonfinite, self.stop_agreed = agree_flags(
            [nonfinite, bool(stop is not None and stop.requested)], self.accelerator.device)
        return nonfinite

    def forward_backward(self, inputs: dict[str, torch.Tensor], scale: float) -> Any:
        """The micro-batch's forward, the objective, and ``backward(loss * scale)``; returns the
        objective's output."""
        z = self.model(**inputs).float()  # (n*b, d): rows n*i .. n*i+n-1 = example i
        out = self.objective(*views(z, self.config.supervision))  # (z1, z2[, z3])
        # Backward is queued before the host reads anything, so a GPU is never idle waiting
        # for Python; a non-finite loss only gives non-finite gradients, which are dropped
        # before any optimiser step.
        self.accelerator.backward(out.loss * scale)
        return out

    def run(self, data: Iterator[Any], state: TrainerState) -> StepResult:
        """Returns (mean loss, objective stats, applied); (None, {}, False) when data runs out."""
        cfg = self.config
        snapshot = None
        if cfg.skip_nonfinite:
            snapshot = {k: v.clone() if isinstance(v, torch.Tensor) else v
                        for k, v in self.objective.state_dict().items()}
        losses: list[float] = []
        stats: dict[str, float] = {}
        bad: float | None = None  # the first non-finite loss of this update
        for micro in range(cfg.grad_accum_steps):
            try:
                item = next(data)
            except StopIteration:
                return None, {}, False
            inputs = self.take(item, state)
            last = micro == cfg.grad_accum_steps - 1
            sync = contextlib.nullcontext() if last else self.accelerator.no_sync(self.model)
            with sync:
                out = self.forward_backward(inputs, self.world / cfg.grad_accum_steps)
            read = read_scalars(out.stats or {}, first=out.loss)  # the micro-step's one host sync
            loss_value = read.pop("")
            if bad is None and not math.isfinite(loss_value):
                bad = loss_value
            losses.append(loss_value)
            stats = read
            state.sentences_seen += cfg.batch_size
        if self.agree(bad is not None):  # one collective per update
            self.on_nonfinite(bad if bad is not None else float("nan"), snapshot, state)
            return 0.0, {}, False
        if cfg.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        skipped = self.optimizer_step()
        if not skipped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if skipped:  # fp16: the scaler found inf/NaN gradients; not a step (schedule agrees)
            self.on_overflow(state)
            return sum(losses) / len(losses), stats, False
        return sum(losses) / len(losses), stats, True

    def optimizer_step(self) -> bool:
        """``optimizer.step()``; True when the fp16 gradient scaler skipped it.

        Read from the loss scale (it backs off exactly when inf/NaN gradients were found), not
        from Accelerate's ``step_was_skipped``: with a fused AdamW the scaler hands the
        inf check to the kernel and always calls ``step``, so that flag stays False.
        """
        scaler = self.accelerator.scaler
        before = scaler.get_scale() if scaler is not None else None
        self.optimizer.step()
        return before is not None and scaler.get_scale() < before

    def on_overflow(self, state: TrainerState) -> None:
        state.skipped_overflow += 1
        scaler = self.accelerator.scaler
        logger.info("fp16 gradient overflow: update skipped, loss scale now %s (%d skipped)",
                    scaler.get_scale() if scaler is not None else "n/a", state.skipped_overflow)

    def on_nonfinite(self, loss: float, snapshot: dict[str, Any] | None,
                     state: TrainerState) -> None:
        cfg = self.config
        step = state.step + 1
        last = list_checkpoints(self.output_dir)
        if not cfg.skip_nonfinite:
            kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint yet"
            raise TrainingError(f"non-finite loss ({loss}) at step {step}; stopped, {kept}"
                                f"; lower --learning-rate, use --precision fp32, or pass "
                                f"--skip-nonfinite")
        # Every process ran the same backward (DDP's reducer stays consistent); drop the
        # non-finite gradients (of every micro-batch so far) and the objective's state update.
        self.optimizer.zero_grad(set_to_none=True)
        if snapshot is not None:
            self.objective.load_state_dict(snapshot)
        state.skipped_nonfinite += 1
        logger.warning("non-finite loss at step %d: update skipped (--skip-nonfinite; %d so far)",
                       step, state.skipped_nonfinite)
        if state.skipped_nonfinite > 100 and state.skipped_nonfinite > step // 2:
            raise TrainingError(f"{state.skipped_nonfinite} non-finite losses by step "
                                f"{step}: training diverged; lower --learning-rate")


__all__ = ["StepResult", "UpdateStep"]

"""One optimiser update: the micro-batches' forward and backward, the update's one collective
(a non-finite loss or a stop signal on any process), clipping, the optimiser and the schedule,
fp16 overflow and non-finite handling.

When the host reads the update's numbers (:data:`READ_EVERY_UPDATE`): on the CPU at every
update, as they come (a read costs nothing there). On a GPU a read waits for the queue to
drain, which at SimCSE's batch 64 costs a launch-bound step a good part of its time, so there
the losses, statistics and agreed flags stay on the device (:class:`PendingUpdate`) and the
trainer reads them all with one ``.tolist()`` at its read points (:meth:`UpdateStep.read`:
every ``--logging-steps``, at most every :data:`MAX_STEPS_UNREAD` steps, before an evaluation
or a checkpoint, at the end). Nothing is lost by waiting:

- a non-finite loss is still reported at the step it happened (each pending update keeps its
  step), and always before any evaluation or checkpoint could use the weights it spoiled;
- ``--skip-nonfinite`` must know before ``optimizer.step`` whether to skip, so with it the
  agreed flag is read at every update (one read, the losses stay pending);
- fp16: whether the gradient scaler skipped the update (which is then not a step, and does
  not advance the schedule) is one device comparison and one read per update (instead of two
  ``get_scale()`` reads);
- a stop signal is agreed in the update's collective as before; the processes read the agreed
  flag at the same read points, so they all stop after the same step.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from csekit import distributed as D
from csekit.errors import TrainingError
from csekit.objectives.base import read_scalars
from csekit.training.agreement import agree_flags
from csekit.training.checkpoint import TrainerState, list_checkpoints
from csekit.training.gradcache import cached_forward_backward, upcast
from csekit.training.supervised import N_VIEWS, views

logger = logging.getLogger(__name__)

StepResult = tuple[float | None, dict[str, float], bool]  # (mean loss, stats, applied)

# Read the update's numbers at every update, by device type (see the module docstring);
# elsewhere they stay on the device until UpdateStep.read.
READ_EVERY_UPDATE: dict[str, bool] = {"cpu": True}
MAX_STEPS_UNREAD = 25  # read points at least this often (a stop signal waits for one)


@dataclass
class PendingUpdate:
    """An applied update whose numbers are still on the device (or already floats).

    ``losses``: (micro-steps,) the objective's losses; ``stats``: the last micro-step's
    stats; ``flags``: [non-finite on any process, stop on any process] (distributed) or
    [non-finite] (one process), None when already decided on the host.
    """

    step: int
    losses: torch.Tensor | list[float]
    stats: dict[str, float | torch.Tensor]
    flags: torch.Tensor | None = None


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
        device = getattr(accelerator, "device", torch.device("cpu"))
        self.deferred = not READ_EVERY_UPDATE.get(torch.device(device).type, False)
        self.pending: list[PendingUpdate] = []
        self._stop_flag: torch.Tensor | None = None  # (device) this process's stop request

    def agree(self, nonfinite: bool) -> bool:
        """The update's ONE collective: a non-finite loss on any process, a stop signal on any
        process. Returns the first; keeps the second in :attr:`stop_agreed`."""
        stop = self.stop
        nonfinite, self.stop_agreed = agree_flags(
            [nonfinite, bool(stop is not None and stop.requested)], self.accelerator.device)
        return nonfinite

    def forward_backward(self, inputs: dict[str, torch.Tensor], scale: float) -> Any:
        """The micro-batch's forward, the objective, and ``backward(loss * scale)``; returns the
        objective's output. With ``mini_batch_size`` set: the same gradient in three passes of
        at most that many examples (:func:`~csekit.training.gradcache.cached_forward_backward`)."""
        cfg = self.config
        if getattr(cfg, "mini_batch_size", None):  # gradient caching (training/gradcache.py)
            return cached_forward_backward(
                model=self.model, objective=self.objective, inputs=inputs,
                mini_batch_size=cfg.mini_batch_size, n_views=N_VIEWS[cfg.supervision],
                split=lambda z: views(z, cfg.supervision),
                backward=lambda loss: self.accelerator.backward(loss * scale),
                no_sync=lambda: self.accelerator.no_sync(self.model),
                device=getattr(self.accelerator, "device", "cpu"))
        z = upcast(self.model(**inputs))  # (n*b, d): rows n*i .. n*i+n-1 = example i
        out = self.objective(*views(z, cfg.supervision))  # (z1, z2[, z3])
        # Backward is queued before the host reads anything, so a GPU is never idle waiting
        # for Python; a non-finite loss only gives non-finite gradients, which are dropped
        # before any optimiser step.
        self.accelerator.backward(out.loss * scale)
        return out

    def run(self, data: Iterator[Any], state: TrainerState) -> StepResult:
        """Returns (mean loss, objective stats, applied); (None, {}, False) when data runs out.

        Deferred reads (a GPU): the loss is ``nan`` and the stats empty here; an applied
        update's numbers come from :meth:`read`.
        """
        cfg = self.config
        snapshot = None
        if cfg.skip_nonfinite:
            snapshot = {k: v.clone() if isinstance(v, torch.Tensor) else v
                        for k, v in self.objective.state_dict().items()}
        losses: list[float] = []
        stats: dict[str, float] = {}
        bad: float | None = None  # the first non-finite loss of this update
        kept: list[Any] = []  # (deferred) the micro-steps' outputs, unread
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
            state.sentences_seen += cfg.batch_size
            if self.deferred:
                kept.append(out)
                continue
            read = read_scalars(out.stats or {}, first=out.loss)  # the micro-step's one host sync
            loss_value = read.pop("")
            if bad is None and not math.isfinite(loss_value):
                bad = loss_value
            losses.append(loss_value)
            stats = read
        if self.deferred:
            return self._run_deferred(kept, snapshot, state)
        if self.agree(bad is not None):  # one collective per update
            self.on_nonfinite(bad if bad is not None else float("nan"), snapshot, state)
            return 0.0, {}, False
        skipped = self.apply()
        if skipped:  # fp16: the scaler found inf/NaN gradients; not a step (schedule agrees)
            self.on_overflow(state)
            return sum(losses) / len(losses), stats, False
        mean = sum(losses) / len(losses)
        self.pending.append(PendingUpdate(state.step + 1, losses, stats))
        return mean, stats, True

    def apply(self) -> bool:
        """Clip, the optimiser step and the schedule, gradients cleared; True when the fp16
        scaler skipped the step (which then does not advance the schedule)."""
        if self.config.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        skipped = self.optimizer_step()
        if not skipped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return skipped

    # ------------------------------------------------------------------ deferred reads
    def _agree_on_device(self, bad: torch.Tensor) -> torch.Tensor:
        """The update's collective without a host read: [non-finite, stop] summed over the
        processes (device, float); [non-finite] in one process."""
        flag = bad.float().reshape(1)
        if not D.is_distributed():
            return flag
        if self._stop_flag is None:
            self._stop_flag = torch.zeros(1, device=flag.device)
        stop = self.stop
        self._stop_flag.fill_(1.0 if stop is not None and stop.requested else 0.0)
        return D.all_reduce_sum_(torch.cat([flag, self._stop_flag]))

    def _run_deferred(self, kept: list[Any], snapshot: dict[str, Any] | None,
                      state: TrainerState) -> StepResult:
        cfg = self.config
        losses = torch.stack([o.loss.detach().float().reshape(()) for o in kept])
        flags = self._agree_on_device(~torch.isfinite(losses).all())
        pending_flags: torch.Tensor | None = flags
        if cfg.skip_nonfinite:  # the decision is needed now: one read (the losses wait)
            read = flags.tolist()
            if len(read) > 1:
                self.stop_agreed = self.stop_agreed or read[1] > 0
            if read[0] > 0:
                bad = [x for x in losses.tolist() if not math.isfinite(x)]
                self.on_nonfinite(bad[0] if bad else float("nan"), snapshot, state)
                return 0.0, {}, False
            pending_flags = None  # both flags are decided
        skipped = self.apply()
        if skipped:
            self.on_overflow(state)
            return math.nan, {}, False
        stats = {k: v.detach() if isinstance(v, torch.Tensor) else v
                 for k, v in (kept[-1].stats or {}).items()}
        self.pending.append(PendingUpdate(state.step + 1, losses, stats, pending_flags))
        return math.nan, {}, True

    def read(self, state: TrainerState) -> list[tuple[int, float, dict[str, float]]]:
        """(step, mean loss, stats) of every update applied since the last read, in order,
        with one host read for all of them. Raises the non-finite loss error at the step it
        happened (unless ``--skip-nonfinite`` already handled it); updates
        :attr:`stop_agreed` from the agreed stop flags."""
        pending, self.pending = self.pending, []
        tensors: list[torch.Tensor] = []
        for p in pending:
            if isinstance(p.losses, torch.Tensor):
                tensors.append(p.losses.reshape(-1))
                tensors += [v.detach().float().reshape(1) for v in p.stats.values()
                            if isinstance(v, torch.Tensor) and v.numel() == 1]
                if p.flags is not None:
                    tensors.append(p.flags.float().reshape(-1))
        values = iter(torch.cat([t.to(tensors[0].device) for t in tensors]).tolist()
                      if tensors else [])
        out: list[tuple[int, float, dict[str, float]]] = []
        for p in pending:
            if not isinstance(p.losses, torch.Tensor):  # read already (every-update mode)
                losses, stats = list(p.losses), dict(p.stats)  # type: ignore[arg-type]
            else:
                losses = [next(values) for _ in range(p.losses.numel())]
                stats = {k: next(values) if isinstance(v, torch.Tensor) else float(v)
                         for k, v in p.stats.items()
                         if not isinstance(v, torch.Tensor) or v.numel() == 1}
                if p.flags is not None:
                    flags = [next(values) for _ in range(p.flags.numel())]
                    if len(flags) > 1 and flags[1] > 0:
                        self.stop_agreed = True
                    if flags[0] > 0:
                        bad = next((x for x in losses if not math.isfinite(x)), float("nan"))
                        self.on_nonfinite(bad, None, state, step=p.step)
            out.append((p.step, sum(losses) / len(losses), stats))
        return out

    def optimizer_step(self) -> bool:
        """``optimizer.step()``; True when the fp16 gradient scaler skipped it.

        Read from the loss scale (it backs off exactly when inf/NaN gradients were found), not
        from Accelerate's ``step_was_skipped``: with a fused AdamW the scaler hands the
        inf check to the kernel and always calls ``step``, so that flag stays False.
        """
        scaler = self.accelerator.scaler
        if scaler is None:
            self.optimizer.step()
            return False
        scale = getattr(scaler, "_scale", None)  # (device tensor; torch's GradScaler)
        if not self.deferred or not isinstance(scale, torch.Tensor):
            before = scaler.get_scale()
            self.optimizer.step()
            return scaler.get_scale() < before
        before_t = scale.detach().clone()
        self.optimizer.step()
        return bool((scaler._scale < before_t).item())  # one read, not two

    def on_overflow(self, state: TrainerState) -> None:
        state.skipped_overflow += 1
        scaler = self.accelerator.scaler
        logger.info("fp16 gradient overflow: update skipped, loss scale now %s (%d skipped)",
                    scaler.get_scale() if scaler is not None else "n/a", state.skipped_overflow)

    def on_nonfinite(self, loss: float, snapshot: dict[str, Any] | None,
                     state: TrainerState, *, step: int | None = None) -> None:
        """A non-finite loss at ``step`` (default: the update being run): stop with one line,
        or with ``--skip-nonfinite`` drop the update (gradients, the objective's state)."""
        cfg = self.config
        step = state.step + 1 if step is None else step
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


__all__ = ["MAX_STEPS_UNREAD", "READ_EVERY_UPDATE", "PendingUpdate", "StepResult",
           "UpdateStep"]

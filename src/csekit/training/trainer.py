"""The training loop on Hugging Face Accelerate.

Accelerate owns the device, mixed precision, DDP wrapping and ``backward``; csekit owns the
rest, so that every step is exactly what the papers describe:

- the GLOBAL batch of ``batch_size`` sentences is defined by ``Corpus.batches`` (the same order
  on every process); rank r reads only rows ``r*b:(r+1)*b`` of it (b = batch_size /
  world_size), so that gathering in rank order recreates the global batch;
- each sentence is tokenised once and repeated (rows 2i and 2i+1, :func:`tokenize_pairs`), one
  forward pass; the two dropout views are z[0::2] and z[1::2] (:func:`split_views`);
- the objective gathers across processes itself; the trainer multiplies its loss by
  ``world_size`` before backward (see :func:`csekit.distributed.gather_with_grad`);
- supervised NLI data (pairs / triplets, chosen from the file's columns): every text of the
  shard in one forward pass, split into (z1, z2[, z3]) for ``objective(z1, z2, z3)``
  (:mod:`csekit.training.supervised`);
- gradient accumulation sums the gradients of ``grad_accum_steps`` global batches; each batch
  keeps its own in-batch negatives (accumulation does not add negatives).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from csekit import distributed as D
from csekit.data.triplets import open_training_corpus
from csekit.errors import ConfigError, DataError
from csekit.precision import configure_tf32
from csekit.training.accel import build_accelerator
from csekit.training.agreement import (
    agree_errors,
    agree_on_checkpoint,
    check_shared_output_dir,
)
from csekit.training.checkpoint import (
    TrainerState,
)
from csekit.training.config import TrainConfig
from csekit.training.feed import BatchFeed
from csekit.training.metrics import MetricsLogger
from csekit.training.model_io import BestModelKeeper, recover_best
from csekit.training.optim import build_optimizer, linear_schedule, raw_optimizer
from csekit.training.prefetch import Prefetcher
from csekit.training.rng import seed_dropout, seed_everything
from csekit.training.run_checkpoints import resume_run, save_run_checkpoint
from csekit.training.signals import StopSignal
from csekit.training.speed import check_dropout_views, configure_training_forward
from csekit.training.step import MAX_STEPS_UNREAD, StepResult, UpdateStep
from csekit.training.supervised import record_mode

logger = logging.getLogger(__name__)

@dataclass
class TrainResult:
    """What a run did. ``exit_code`` is 0, or 130/143 after SIGINT/SIGTERM."""

    output_dir: Path
    steps: int
    stopped: str  # completed | early_stopping | interrupted
    best_score: float | None
    best_step: int | None
    exit_code: int = 0
    losses: list[float] = field(default_factory=list)  # one per optimiser step of THIS process
    test: dict[str, Any] | None = None


class Trainer:
    """``Trainer(config).train()``: one run, resumable, on one or many processes."""

    def __init__(self, config: TrainConfig) -> None:
        given = config
        from accelerate.utils import DistributedDataParallelKwargs

        self.config = config = config.resolved()
        if config.precision == "fp16" and not torch.cuda.is_available():
            raise ConfigError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
        # find_unused_parameters is decided in _build, before prepare() reads it (speed.py)
        self._ddp_kwargs = DistributedDataParallelKwargs(find_unused_parameters=False)
        # (FSDP / DeepSpeed refused here, on every process: accel.py)
        self.accelerator = build_accelerator(config.precision, [self._ddp_kwargs])
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.is_main = self.accelerator.is_main_process
        config.validate(world_size=self.world)
        self.output_dir = Path(config.output_dir)
        agree_errors(self._check_paths)
        self._resume_step = self._agree_on_output_dir()
        if self.is_main:
            logger.info("effective settings: %s", given.effective_summary())
        configure_tf32(self.accelerator.device, config.precision, config.tf32)
        seed_everything(config.seed)
        self._build()
        seed_dropout(config.seed, self.rank)  # dropout differs across processes; data does not
        self.keeper = BestModelKeeper(self.config, self.output_dir,
                                      device=self.accelerator.device, world_size=self.world)

    # ------------------------------------------------------------------ set-up
    def _check_paths(self) -> None:
        cfg = self.config
        from csekit.data.sources import resolve_sources

        resolve_sources(cfg.train_file or "")  # files, folders, globs (#13); DataError if none
        if cfg.dev_eval:
            from csekit.evaluation import resolve_data_dir

            stsb = resolve_data_dir(cfg.data_dir) / "STS" / "STSBenchmark" / "sts-dev.csv"
            if not stsb.is_file():
                raise DataError(f"--data-dir {cfg.data_dir}: no SentEval STS-B dev file at {stsb}; "
                                f"point it at the folder that contains downstream/")
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ConfigError(f"--output-dir {self.output_dir} exists and is not a directory")

    def _agree_on_output_dir(self) -> int | None:
        """Every process sees the same --output-dir, and rank 0's resume decision (issue #18)."""
        check_shared_output_dir(self.output_dir)
        if self.is_main:
            recover_best(self.output_dir)
        return agree_on_checkpoint(self.output_dir, resume=self.config.resume)

    def _build(self) -> None:
        from csekit.modeling.encoder import Encoder
        from csekit.objectives import build_objective

        cfg = self.config
        # Cheap checks first: a bad corpus or option fails before a model is loaded.
        self.corpus, mode = open_training_corpus(
            cfg.train_file, supervision=cfg.supervision, text_columns=cfg.text_columns,
            text_column=cfg.text_column, dedup=cfg.dedup, on_bad_line=cfg.on_bad_line)
        # the mode chosen from the data (supervised NLI, issue #14) is kept in the config
        self.config = cfg = record_mode(cfg, mode, getattr(self.corpus, "columns", ()))
        self.batches_per_epoch = self._count_batches()
        if self.batches_per_epoch < 1:
            raise DataError(f"corpus {cfg.train_file} has fewer sentences than one global batch "
                            f"of {cfg.batch_size}; lower --batch-size or add sentences")
        self.objective = build_objective(cfg.objective, **cfg.objective_hparams())
        self.encoder = Encoder.from_pretrained(cfg.model, pooler=cfg.pooler, mlp=cfg.mlp,
                                               dropout=cfg.dropout,
                                               trust_remote_code=cfg.trust_remote_code,
                                               prompt=cfg.prompt_config(),
                                               instruction=cfg.instruction,
                                               lora=cfg.lora_settings(),
                                               bidirectional=cfg.bidirectional)
        self.encoder.to(self.accelerator.device)
        configure_training_forward(self.encoder, cfg, ddp_kwargs=self._ddp_kwargs,
                                   world_size=self.world, device=self.accelerator.device)
        check_dropout_views(self.encoder, cfg)
        self.objective.to(self.accelerator.device)
        if cfg.max_steps is not None:
            self.total_steps = cfg.max_steps
        else:
            self.total_steps = (cfg.epochs * self.batches_per_epoch) // cfg.grad_accum_steps
            if self.total_steps < 1:
                raise DataError(f"corpus {cfg.train_file} gives {self.batches_per_epoch} batches, "
                                f"fewer than --grad-accum-steps {cfg.grad_accum_steps}")
        warmup = cfg.warmup_steps or int(cfg.warmup_ratio * self.total_steps)
        self.model, self.optimizer = self.accelerator.prepare(
            self.encoder, build_optimizer(self.encoder, cfg))
        # Not prepared: Accelerate would step it once per process; it steps once per update here.
        self.scheduler = LambdaLR(raw_optimizer(self.optimizer),
                                  linear_schedule(warmup, self.total_steps))
        self.state = TrainerState()
        self.feed = BatchFeed(self.corpus, cfg, rank=self.rank, world=self.world,
                              tokenizer=self.encoder.tokenizer, prompt=self.encoder.prompt,
                              device=self.accelerator.device)
        self.stepper = UpdateStep(config=cfg, accelerator=self.accelerator, model=self.model,
                                  objective=self.objective, optimizer=self.optimizer,
                                  scheduler=self.scheduler, world=self.world,
                                  output_dir=self.output_dir, take=self.feed.take)

    def _count_batches(self) -> int:
        return self.corpus.num_batches(self.config.batch_size)

    # ------------------------------------------------------------------ data
    def _data_stream(self) -> Prefetcher:
        """Tokenised local batches from the saved data position on (:class:`BatchFeed`)."""
        return self.feed.stream(self.state)

    def _take(self, item: tuple[dict[str, Any], tuple[int, int]]) -> dict[str, torch.Tensor]:
        """Use a prepared batch: record its data position, copy it to the device."""
        return self.feed.take(item, self.state)

    # ------------------------------------------------------------------ resume / checkpoints
    def _resume(self) -> None:
        """Load rank 0's chosen checkpoint into this run (:func:`resume_run`)."""
        resume_run(self)

    def _save_checkpoint(self) -> None:
        """A full checkpoint of this step, every process's RNG state in it
        (:func:`save_run_checkpoint`)."""
        save_run_checkpoint(self)

    # ------------------------------------------------------------------ the loop
    def train(self) -> TrainResult:
        cfg = self.config
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
        D.barrier()
        metrics = MetricsLogger(self.output_dir, enabled=self.is_main, tensorboard=cfg.tensorboard)
        if cfg.resume:
            self._resume()
            metrics.truncate_after(self.state.step)
        result = TrainResult(self.output_dir, self.state.step, "completed",
                             self.state.best_score, self.state.best_step)
        if self.state.finished:
            logger.info("the run in %s already finished; nothing to resume", self.output_dir)
            return result
        try:
            with StopSignal() as stop:
                self._loop(stop, metrics, result)
        finally:
            metrics.close()
            if getattr(self, "_data", None) is not None:
                self._data.close()
        result.steps = self.state.step
        result.best_score, result.best_step = self.state.best_score, self.state.best_step
        if result.stopped != "interrupted":
            result.test = agree_errors(self._finish)
        D.barrier()
        return result

    def _finish(self) -> dict[str, Any] | None:
        """Rank 0: the final model (no evaluation) or the final test of the best model."""
        cfg = self.config
        if not self.is_main:
            return None
        if not cfg.dev_eval:  # no dev evaluation: the best model is the last one
            self.keeper.save(self._unwrapped(), self.state, score=None)
        if cfg.data_dir is not None and cfg.final_test:
            return self.keeper.final_test(self.state)
        return None

    def _loop(self, stop: StopSignal, metrics: MetricsLogger, result: TrainResult) -> None:
        from tqdm.auto import tqdm

        cfg = self.config
        bar = tqdm(total=self.total_steps, initial=self.state.step, unit="step",
                   disable=not (self.is_main and cfg.progress) or bool(os.environ.get("CI")),
                   dynamic_ncols=True)
        try:  # (closed before any error is printed: the error gets a line of its own)
            self._run_steps(stop, metrics, result, bar)
        finally:
            bar.close()

    def _run_steps(self, stop: StopSignal, metrics: MetricsLogger, result: TrainResult,
                   bar: Any) -> None:
        """The updates, with logging, dev evaluation, checkpoints and stopping.

        The updates' losses and stats are read on the host at read points (every update on
        the CPU; on a GPU every --logging-steps, at most every MAX_STEPS_UNREAD steps, and
        before an evaluation or a checkpoint: :meth:`UpdateStep.read`)."""
        cfg = self.config
        data = self._data = self._data_stream()
        self.stepper.stop, self.stepper.stop_agreed = stop, False
        self.model.train()
        t0, sent0 = time.perf_counter(), self.state.sentences_seen
        window: list[float] = []
        last_stats: dict[str, float] = {}
        read_every = min(cfg.logging_steps, MAX_STEPS_UNREAD)

        def read() -> None:
            nonlocal last_stats
            for _step, loss, stats in self.stepper.read(self.state):
                result.losses.append(loss)
                window.append(loss)
                last_stats = stats

        if cfg.dev_eval and cfg.eval_at_start and self.state.step == 0 \
                and not self.state.history:
            self._evaluate(metrics)
        while self.state.step < self.total_steps:
            loss_value, _stats, ok = self._step(data)
            if loss_value is None:  # data exhausted
                break
            if not ok:
                continue
            self.state.step += 1
            step = self.state.step
            bar.update(1)
            done = step >= self.total_steps
            log_now = step % cfg.logging_steps == 0 or done
            eval_now = cfg.dev_eval and (step % cfg.eval_steps == 0 or done)
            save_now = step % cfg.save_steps == 0 or done
            if (not self.stepper.deferred or log_now or eval_now or save_now
                    or step % read_every == 0 or self._interrupted()):
                read()  # a non-finite loss stops here, naming its step
            if log_now and window:
                elapsed = time.perf_counter() - t0
                rate = (self.state.sentences_seen - sent0) / elapsed if elapsed > 0 else 0.0
                lr = self.scheduler.get_last_lr()[0]
                metrics.log({"step": step, "epoch": self.state.epoch,
                             "loss": sum(window) / len(window), "lr": lr,
                             "sentences_per_s": rate, **{f"obj/{k}": v
                                                         for k, v in last_stats.items()}})
                bar.set_postfix(loss=f"{sum(window) / len(window):.4f}", lr=f"{lr:.2e}",
                                sent_s=f"{rate:.0f}")
                window.clear()
            if eval_now:
                self._evaluate(metrics)
            interrupted = self._interrupted()
            early = (cfg.patience is not None
                     and self.state.evals_without_improvement >= cfg.patience)
            if early or done:
                self.state.finished = True
            if save_now or interrupted or early:
                self._save_checkpoint()
            if interrupted:
                result.stopped, result.exit_code = "interrupted", stop.exit_code or 130
                logger.warning("stopped by signal at step %d; resume with --resume", step)
                break
            if early:
                result.stopped = "early_stopping"
                logger.info("early stopping at step %d: no STS-B dev improvement in %d "
                            "evaluations (best %.2f at step %s)", step, cfg.patience,
                            self.state.best_score or float("nan"), self.state.best_step)
                break
        read()  # (updates left unread when the data ran out)

    def _unwrapped(self) -> Any:
        """The Encoder under Accelerate's wrappers."""
        return self.accelerator.unwrap_model(self.model)

    def _interrupted(self) -> bool:
        """A stop signal, agreed by all processes in the update's one collective; a single
        process reads its own flag directly (nothing to agree on)."""
        if not D.is_distributed():
            return self.stepper.stop is not None and self.stepper.stop.requested
        return self.stepper.stop_agreed

    def _step(self, data: Iterator[Any]) -> StepResult:
        """One optimiser update over ``grad_accum_steps`` global batches (:class:`UpdateStep`).

        Returns (mean loss, objective stats, applied); (None, {}, False) when data runs out.
        """
        return self.stepper.run(data, self.state)

    def _dev_score(self) -> float:
        """STS-B dev of the current model (rank 0; 0.0 elsewhere, replaced by the broadcast)."""
        return self.keeper.evaluate_dev(self._unwrapped()) if self.is_main else 0.0

    def _save_best(self, score: float) -> None:
        if self.is_main:
            self.keeper.save(self._unwrapped(), self.state, score=score)

    def _evaluate(self, metrics: MetricsLogger) -> None:
        data = getattr(self, "_data", None)
        if data is not None:
            data.drain()  # no background tokenising while evaluation uses the tokenizer
        # Rank 0 evaluates and saves; an error there (a NaN, a full disk) must stop every
        # process with its line, not leave the others waiting in the broadcast (agree_errors).
        score = agree_errors(self._dev_score)
        t = torch.tensor([score], dtype=torch.float64, device=self.accelerator.device)
        score = float(D.broadcast_(t).item())
        st = self.state
        improved = st.best_score is None or score > st.best_score
        if improved:
            st.best_score, st.best_step = score, st.step
            st.evals_without_improvement = 0
            agree_errors(self._save_best, score)
        else:
            st.evals_without_improvement += 1
        st.history.append({"step": st.step, "stsb_dev": score})
        metrics.log({"step": st.step, "eval/stsb_dev_spearman": score,
                     "eval/best": st.best_score, "eval/best_step": st.best_step})
        logger.info("step %d: STS-B dev Spearman %.2f (best %.2f at step %d)", st.step, score,
                    st.best_score, st.best_step)
        D.barrier()
        self.model.train()


__all__ = ["TrainResult", "Trainer"]

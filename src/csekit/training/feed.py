"""The data side of the loop: this process's slices of the global batches, tokenised one batch
ahead, with the data position each one leaves the run at (what a checkpoint records)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from csekit.data.switch_case import switch_case_pairs, tokenizer_is_cased
from csekit.errors import ConfigError, DataError
from csekit.training.checkpoint import TrainerState
from csekit.training.prefetch import Prefetcher, pin, to_device
from csekit.training.supervised import tokenize_batch

Position = tuple[int, int]  # (epoch, batches consumed in it)


class BatchFeed:
    """Batches of one run for one process.

    Args:
        corpus: the training corpus (:class:`csekit.data.Corpus` or a triplet corpus).
        config: the resolved :class:`~csekit.training.config.TrainConfig`.
        rank, world: this process and the number of processes.
        tokenizer, prompt: the encoder's tokenizer and prompt pooler (None without one).
        device: where the batches go.
    """

    def __init__(self, corpus: Any, config: Any, *, rank: int, world: int, tokenizer: Any,
                 prompt: Any, device: torch.device) -> None:
        self.corpus = corpus
        self.config = config
        self.rank, self.world = rank, world
        self.tokenizer, self.prompt = tokenizer, prompt
        self.device = device
        if config.switch_case:
            if config.supervision != "unsupervised":
                raise ConfigError(f"--switch-case augments the positive view of unsupervised "
                                  f"training; {config.train_file} trains {config.supervision}")
            if not tokenizer_is_cased(tokenizer):
                raise ConfigError(f"--switch-case has no effect with {config.model}: its "
                                  f"tokenizer lowercases the text (an uncased model); use a "
                                  f"cased one (RoBERTa, bert-base-cased) or drop the option")

    def micro_batches(self, start: Position) -> Iterator[tuple[list[Any], Position]]:
        """This process's slices of the global batches from ``start`` on, across epochs, each
        with the data position after it; the run's state is set when a batch is used
        (:meth:`take`), not when it is read ahead."""
        cfg = self.config
        epoch, done = start
        while True:
            if cfg.max_steps is None and epoch >= cfg.epochs:
                return
            it = self.corpus.batches(cfg.batch_size, seed=cfg.seed, epoch=epoch, skip=done,
                                     rank=self.rank, world=self.world)
            got = False
            for batch in it:
                if len(batch) < cfg.batch_size // self.world:
                    break  # a short last batch is dropped (fixed global batch size)
                got = True
                done += 1
                yield batch, (epoch, done)
            if not got and done == 0:
                raise DataError(f"corpus {cfg.train_file} yields no full batch of "
                                f"{cfg.batch_size} sentences")
            epoch, done = epoch + 1, 0

    def stream(self, state: TrainerState) -> Prefetcher:
        """Tokenised local batches from the state's data position, prepared one ahead in a
        background thread (pinned on CUDA); each item is (host inputs, data position)."""

        def prepare(item: tuple[list[Any], Position]) -> tuple[dict[str, Any], Position]:
            batch, position = item
            return pin(self.local_inputs(batch, position), self.device), position

        return Prefetcher(self.micro_batches((state.epoch, state.batches_in_epoch)), prepare,
                          enabled=self.config.prefetch)

    def take(self, item: tuple[dict[str, Any], Position],
             state: TrainerState) -> dict[str, torch.Tensor]:
        """Use a prepared batch: record its data position in ``state``, copy it to the device."""
        inputs, (state.epoch, state.batches_in_epoch) = item
        return to_device(inputs, self.device)

    def local_inputs(self, local: list[Any],
                     position: Position = (0, 0)) -> dict[str, torch.Tensor]:
        """This process's rows of the global batch, tokenised for all views (host tensors).

        ``position``: the data position after this batch; with ``--switch-case`` it keys the
        draw of the positive views (:mod:`csekit.data.switch_case`), so a resumed run and any
        number of processes draw the same flips. Those rows are (sentence, switched sentence)
        pairs in the layout of supervised pairs: view 1 the sentence, view 2 its switched copy
        (prompt pooler: T1 and T2 as in unsupervised training)."""
        # (prompt pooler: the per-view templates, T1 for view 1 and T2 for view 2)
        cfg = self.config
        if cfg.switch_case and cfg.supervision == "unsupervised":
            rows = switch_case_pairs(local, cfg.switch_case, seed=cfg.seed, epoch=position[0],
                                     batch=position[1])
            return tokenize_batch(self.tokenizer, rows, "pairs", cfg.max_seq_len,
                                  prompt=self.prompt)
        return tokenize_batch(self.tokenizer, local, self.config.supervision,
                              self.config.max_seq_len, prompt=self.prompt)


__all__ = ["BatchFeed", "Position"]

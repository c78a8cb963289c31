"""Background prefetch (issue #18): the same items, in order, errors where they belong; a run
with prefetch equals one without (losses and weights), so it cannot change the data position
saved in checkpoints; one collective per update."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from csekit.errors import DataError
from csekit.precision import configure_tf32, exact_fp32
from csekit.training import Trainer
from csekit.training.prefetch import Prefetcher, pin, to_device

sys.path.insert(0, str(Path(__file__).parent))
from test_train import config, make_corpus


def test_prefetcher_keeps_order_and_overlaps() -> None:
    threads: list[str] = []

    def prepare(x: int) -> int:
        threads.append(threading.current_thread().name)
        time.sleep(0.01)
        return x * x

    with Prefetcher(iter(range(20)), prepare) as p:
        assert list(p) == [x * x for x in range(20)]
    assert all(t.startswith("csekit-prefetch") for t in threads)
    with Prefetcher(iter(range(5)), prepare, enabled=False) as p:
        assert list(p) == [0, 1, 4, 9, 16]
    assert threads[-1] == threading.current_thread().name


def test_prefetcher_prepares_one_ahead_and_drains() -> None:
    started: list[int] = []
    p = Prefetcher(iter(range(10)), lambda x: started.append(x) or x)
    assert next(p) == 0
    p.drain()
    assert started == [0, 1]  # exactly one item ahead, finished after drain
    assert next(p) == 1
    p.drain()
    assert started == [0, 1, 2]
    p.close()


def test_prefetcher_raises_errors_in_place() -> None:
    def source():  # type: ignore[no-untyped-def]
        yield 1
        yield 2
        raise DataError("bad line 3")

    p = Prefetcher(source(), lambda x: x)
    assert next(p) == 1 and next(p) == 2
    with pytest.raises(DataError, match="bad line 3"):
        next(p)
    with pytest.raises(StopIteration):
        next(p)
    p.close()


def test_pin_and_copy_are_identity_on_cpu() -> None:
    batch = {"input_ids": torch.arange(6).view(2, 3)}
    cpu = torch.device("cpu")
    assert pin(batch, cpu) is batch
    assert to_device(batch, cpu)["input_ids"] is batch["input_ids"]


def test_tf32_only_for_fp32_on_ampere_and_exact_fp32_restores() -> None:
    assert configure_tf32(torch.device("cpu"), "fp32", True) is False
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    with exact_fp32():
        assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cuda.matmul.allow_tf32 is True
    torch.backends.cuda.matmul.allow_tf32 = before


def test_prefetch_on_equals_off_with_dropout(tiny_bert_dir: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = make_corpus(tmp_path / "c.txt", n=64)  # 4 batches of 16: the run crosses epochs
    runs = {}
    for prefetch in (True, False):
        out = tmp_path / f"p{prefetch}"
        t = Trainer(config(tiny_bert_dir, corpus, out, max_steps=5, dropout=0.1,
                           grad_accum_steps=2, prefetch=prefetch, objective="clusterns",
                           n_clusters=4, kmeans_start_cosine=0.99))
        calls: list[int] = []

        def counted(bad, calls=calls, real=t.stepper.agree):
            calls.append(1)
            return real(bad)
        monkeypatch.setattr(t.stepper, "agree", counted)
        res = t.train()
        assert len(calls) == res.steps == 5  # one agreement (one collective) per update
        assert (t.state.epoch, t.state.batches_in_epoch) == (2, 2)  # 10 batches of 4 / epoch
        runs[prefetch] = (res.losses, load_file(str(out / "checkpoints" / "step-5"
                                                   / "model.safetensors")))
    assert runs[True][0] == runs[False][0]
    for k, v in runs[True][1].items():
        assert torch.equal(v, runs[False][1][k]), k

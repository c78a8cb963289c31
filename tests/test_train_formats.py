"""Training from JSONL / Parquet (#13) is training from the same sentences in a .txt.

Oracle: the losses of a run on the plain-text file of the same real wiki sentences (same seed:
the shuffle depends only on the number of rows, the rows are identical), and for resume the
uninterrupted run from the same Parquet file.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from test_data_formats import write_all
from test_train import _stop_after, config

from csekit.training import Trainer


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, wiki_corpus: Path) -> dict[str, Path]:
    rows = []
    with open(wiki_corpus, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(line.strip())
            if len(rows) == 96:
                break
    return write_all(tmp_path_factory.mktemp("train-formats"), rows)


def test_parquet_and_jsonl_runs_equal_the_txt_run(tiny_bert_dir: Path, tmp_path: Path,
                                                  sources: dict[str, Path]) -> None:
    kw = {"max_steps": 4, "batch_size": 8, "dedup": True}
    ref = Trainer(config(tiny_bert_dir, sources["txt"], tmp_path / "txt", **kw)).train()
    assert len(ref.losses) == 4
    for fmt in ("parquet", "jsonl"):
        run = Trainer(config(tiny_bert_dir, sources[fmt], tmp_path / fmt, text_column="text",
                             **kw)).train()
        assert run.losses == ref.losses, fmt  # exactly, not approximately


def test_resume_from_parquet_is_exact(tiny_bert_dir: Path, tmp_path: Path,
                                      sources: dict[str, Path]) -> None:
    kw = {"max_steps": 5, "batch_size": 8, "save_steps": 2}
    ref = Trainer(config(tiny_bert_dir, sources["parquet"], tmp_path / "a", **kw)).train()
    t = Trainer(config(tiny_bert_dir, sources["parquet"], tmp_path / "b", **kw))
    _stop_after(t, 3, signal.SIGTERM)
    part = t.train()
    assert part.stopped == "interrupted" and part.steps == 3
    rest = Trainer(config(tiny_bert_dir, sources["parquet"], tmp_path / "b", resume=True,
                          **kw)).train()
    assert part.losses + rest.losses == pytest.approx(ref.losses, abs=1e-6)

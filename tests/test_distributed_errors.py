"""An error on ONE process ends EVERY process with the same line (issue #28).

Rank 0 alone evaluates STS-B dev and writes the best model; the others wait in the score's
broadcast. A failure there (a NaN check, a full disk) must not leave them waiting: every
process ends with the same ``csekit: error:`` line (csekit.training.agreement.agree_errors).
In-process tests of the agreement logic with a stand-in for the collective, and one real
2-process gloo run per failure (torchrun on 127.0.0.1); FSDP refused on both processes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from csekit import distributed as D
from csekit.errors import CheckpointError, TrainingError
from csekit.training import agreement

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed_agreement import _env, _torchrun, _worker_stderr
from test_train import make_corpus
from test_train_eval import make_senteval

HERE = Path(__file__).parent


class _TwoProcesses:
    """all_gather_object as process ``rank`` of 2 sees it, the other process sending ``other``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, rank: int, other: object) -> None:
        self.sent: list[object] = []
        monkeypatch.setattr(D, "is_distributed", lambda: True)
        monkeypatch.setattr(D, "rank", lambda: rank)

        def gather(obj: object) -> list[object]:
            self.sent.append(obj)
            return [obj, other] if rank == 0 else [other, obj]

        monkeypatch.setattr(D, "all_gather_object", gather)


def test_a_library_error_on_rank_0_reaches_every_process(monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    def evaluate() -> float:
        raise RuntimeError("embeddings contain NaN\nmore detail")

    line = "process 0 failed: RuntimeError: embeddings contain NaN"
    # rank 0: the exception does not escape before the collective; it becomes a one-line
    # TrainingError (exit 1) and the traceback is logged
    two = _TwoProcesses(monkeypatch, 0, None)
    with pytest.raises(TrainingError) as got:
        agreement.agree_errors(evaluate)
    assert str(got.value) == line and two.sent == [("TrainingError", line)]
    assert isinstance(got.value.__cause__, RuntimeError)
    assert any(r.exc_info for r in caplog.records)
    # rank 1 (fine itself): raises the same line
    _TwoProcesses(monkeypatch, 1, ("TrainingError", line))
    with pytest.raises(TrainingError, match=f"^{line}$"):
        agreement.agree_errors(lambda: 0.0)


def test_the_first_error_wins_everywhere_with_its_class(monkeypatch: pytest.MonkeyPatch) -> None:
    disk = ("CheckpointError", "no space left on device writing the best model")

    def other_error() -> None:
        raise TrainingError("something else on rank 1")

    _TwoProcesses(monkeypatch, 1, disk)
    with pytest.raises(CheckpointError, match="^no space left"):
        agreement.agree_errors(other_error)  # rank 1's own error loses to rank 0's
    _TwoProcesses(monkeypatch, 1, None)
    assert agreement.agree_errors(lambda: 7) == 7


def test_single_process_errors_are_untouched() -> None:
    def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        agreement.agree_errors(boom)


def _run(tmp_path: Path, tiny: Path, probe_args: list[str], extra_env: dict[str, str],
         ) -> list[str]:
    corpus = make_corpus(tmp_path / "corpus.txt", n=120)
    data = make_senteval(tmp_path / "senteval", n=20)
    logs = tmp_path / "logs"
    cmd = _torchrun(2, log_dir=logs) + ["--monitor-interval", "5"]
    cmd += [*probe_args, "--", "--model", str(tiny), "--train-file", str(corpus),
            "--data-dir", str(data), "--output-dir", str(tmp_path / "run"), "--batch-size", "8",
            "--max-steps", "4", "--eval-steps", "2", "--no-final-test", "--pooler", "avg",
            "--mlp", "none", "--no-progress"]
    p = subprocess.run(cmd, env=_env(**extra_env), capture_output=True, text=True,
                       check=False, timeout=300)
    assert p.returncode != 0
    errs = _worker_stderr(logs)
    assert len(errs) == 2, p.stderr[-3000:]
    return errs


@pytest.mark.parametrize("mode,expected,traceback_on_0", [
    ("eval", "csekit: error: process 0 failed: RuntimeError: embeddings contain NaN", True),
    # (slow: a second torchrun launch, ~35 s loaded; the in-process tests cover the logic)
    pytest.param("save", "csekit: error: no space left on the device to save the best model",
                 False, marks=pytest.mark.slow)])
def test_rank0_failure_ends_both_processes_with_one_line(tiny_bert_dir: Path, tmp_path: Path,
                                                         mode: str, expected: str,
                                                         traceback_on_0: bool) -> None:
    errs = _run(tmp_path, tiny_bert_dir, [str(HERE / "_rank0_fault_probe.py"), mode], {})
    lines = [[x for x in e.splitlines() if x.startswith("csekit: error:")] for e in errs]
    assert all(len(ls) == 1 for ls in lines), [e[-2000:] for e in errs]
    assert lines[0] == lines[1] and lines[0][0].startswith(expected), lines
    assert "Traceback" not in errs[1]  # rank 1 only reports
    assert ("Traceback" in errs[0]) == traceback_on_0  # rank 0 logs a library error's


@pytest.mark.slow
def test_fsdp_is_refused_on_every_process(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """Slow (a torchrun launch, ~30 s loaded); tests/test_engines.py shows the refusal in one
    process, and each process checks its own environment."""
    errs = _run(tmp_path, tiny_bert_dir, ["-m", "csekit.cli.train_cmd"],
                {"ACCELERATE_USE_FSDP": "true"})
    for e in errs:
        lines = [x for x in e.splitlines() if x.startswith("csekit: error:")]
        assert len(lines) == 1 and "set up for FSDP" in lines[0] and "Traceback" not in e
    assert not (tmp_path / "run").exists()

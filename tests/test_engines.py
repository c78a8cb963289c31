"""Accelerate engines csekit is not right on are refused (issue #28): FSDP, DeepSpeed and
Megatron-LM, set by ``accelerate launch`` through its environment variables (what a config
file with ``distributed_type: FSDP`` exports) or found in the built Accelerator's
``distributed_type``. One line, exit 2, before any model is loaded or file written; every
process of a launch makes the same check itself (the 2-process case is in
tests/test_distributed_errors.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from accelerate.utils import DistributedType

from csekit.cli.main import main
from csekit.errors import ConfigError
from csekit.training.accel import check_distributed_type, check_engine_env

sys.path.insert(0, str(Path(__file__).parent))
from test_train import make_corpus


@pytest.mark.parametrize("var,engine", [("ACCELERATE_USE_FSDP", "FSDP"),
                                        ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"),
                                        ("ACCELERATE_USE_MEGATRON_LM", "Megatron-LM")])
def test_train_refuses_a_sharded_engine_with_one_line(var: str, engine: str, tiny_bert_dir: Path,
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    corpus = make_corpus(tmp_path / "corpus.txt", n=40)
    out = tmp_path / "run"
    monkeypatch.setenv(var, "true")
    rc = main(["train", "--model", str(tiny_bert_dir), "--train-file", str(corpus),
               "--output-dir", str(out), "--batch-size", "8", "--max-steps", "2",
               "--no-progress", "--pooler", "avg", "--mlp", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("csekit: error: Accelerate is set up for " + engine)
    assert "Traceback" not in "\n".join(err)
    assert not out.exists()  # nothing trained, nothing written


def test_distributed_types() -> None:
    for ok in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        check_distributed_type(ok)
    for bad in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM,
                DistributedType.XLA, DistributedType.MULTI_XPU):
        with pytest.raises(ConfigError, match=f"set up for {bad.value}"):
            check_distributed_type(bad)
    check_engine_env({"ACCELERATE_USE_FSDP": "false", "ACCELERATE_USE_DEEPSPEED": "0"})
    with pytest.raises(ConfigError, match="FSDP"):
        check_engine_env({"ACCELERATE_USE_FSDP": "True"})


def test_built_accelerator_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The built Accelerator's own type is checked too (an engine chosen without the env
    variables, e.g. a plugin): its distributed_type is faked here, as a CPU cannot build FSDP."""
    import accelerate

    from csekit.training import accel

    class Fake:
        distributed_type = DistributedType.FSDP
        num_processes = 1

    monkeypatch.setattr(accelerate, "Accelerator", lambda **kw: Fake())
    with pytest.raises(ConfigError, match="set up for FSDP"):
        accel.build_accelerator("fp32", [])

"""The run's ``Accelerator``: built once, refused when it is not an engine csekit is right on.

csekit's training step is correct on one process and on plain data parallelism (DDP on GPUs,
gloo on CPUs): the lean forward reads the backbone's weights directly
(``layer.attention.self.query.weight``), the best model and checkpoints are written by rank 0
from its full copy of the weights, and the optimiser and schedule are stepped by csekit. FSDP,
DeepSpeed and Megatron-LM shard the weights or wrap the optimiser, which each of those would
bypass or misread, so they are refused with one line on every process (each process builds
its own Accelerator and checks it), before any model is loaded.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from csekit.errors import ConfigError

_MIXED = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
# What ``accelerate launch`` (its config file or flags) sets for a sharded / wrapped engine.
ENGINE_ENV = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
              "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}
# Accelerate's DistributedType values csekit trains under (plain DDP, gloo, one process).
SUPPORTED_TYPES = ("NO", "MULTI_CPU", "MULTI_GPU")


def _refuse(engine: str) -> ConfigError:
    return ConfigError(f"Accelerate is set up for {engine}, which csekit does not support "
                       f"(it trains with plain data parallelism: DDP on GPUs, gloo on CPUs); "
                       f"launch with a config without {engine} (docs/distributed.md)")


def check_engine_env(environ: Any = None) -> None:
    """Refuse an FSDP / DeepSpeed / Megatron-LM launch from its environment variables."""
    env = os.environ if environ is None else environ
    for var, engine in ENGINE_ENV.items():
        if str(env.get(var, "false")).strip().lower() in ("true", "1", "yes"):
            raise _refuse(engine)


def check_distributed_type(distributed_type: Any) -> None:
    """Refuse any Accelerate distributed type but DDP, multi-CPU and a single process."""
    name = str(getattr(distributed_type, "value", distributed_type))
    if name not in SUPPORTED_TYPES:
        raise _refuse(name)


def build_accelerator(precision: str, kwargs_handlers: list[Any]) -> Any:
    """The run's Accelerator for ``precision`` (fp32 | bf16 | fp16), checked (see module)."""
    from accelerate import Accelerator

    check_engine_env()
    kwargs = {
        "mixed_precision": _MIXED[precision],
        # Without a GPU, cpu=True lets Accelerate build a gloo group from torchrun's env.
        "cpu": not torch.cuda.is_available(),
        "kwargs_handlers": kwargs_handlers,
    }
    try:
        accelerator = Accelerator(**kwargs)
    except ValueError:
        # A second Trainer in the same single process with another precision (notebooks,
        # tests): Accelerate's state is a process-wide singleton; reset it and retry.
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
        accelerator = Accelerator(**kwargs)
    check_distributed_type(accelerator.distributed_type)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise ConfigError(f"launched as {launched} processes (WORLD_SIZE) but Accelerate "
                          f"set up {accelerator.num_processes}; see docs/distributed.md")
    return accelerator


__all__ = ["ENGINE_ENV", "SUPPORTED_TYPES", "build_accelerator", "check_distributed_type",
           "check_engine_env"]

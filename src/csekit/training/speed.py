"""Training-step speed settings that keep the maths (issue #17): one call from the Trainer.

- **Length-sorted sub-batches** (``TrainConfig.length_subbatches``): the encoder's train-mode
  forward runs the 2B rows as a few groups of similar length (:mod:`csekit.modeling.speed.subbatch`).
- **find_unused_parameters** only when a parameter really is unused: DDP with
  ``find_unused_parameters=True`` walks the autograd graph every step. The encoder no longer
  holds the backbone's pooler when no forward uses it, so normally every trainable parameter
  gets a gradient; :func:`unused_parameters` checks that with one tiny forward + backward in
  train mode (under a forked RNG, so the run's dropout masks are not shifted), and only a
  model with parameters left without a gradient turns the walk on. Under one process it is
  not needed (no DDP) and the probe is skipped.
- **The lean forward** (``TrainConfig.lean_forward``, :mod:`csekit.modeling.speed.train_forward`):
  stacked Q/K/V and, for [CLS] pooling, only position 0 in the last layer. Off under
  ``compile`` (the compiled module's forward would not be the one that runs). Unset, it is on
  for CPU (measured) and off on accelerators, where it has not run yet: the same rule as the
  sub-batches, until ``benchmarks/gpu_check.sh`` records equality and speed on a GPU.
- ``torch.compile`` of the backbone (``TrainConfig.compile``), in place (``Module.compile``),
  so that parameter names, checkpoints and saved folders are unchanged. Off by default: on
  the 2-core CPU it did not pay (see ``docs/training_speed.md``).
- **Gradient checkpointing** (``TrainConfig.gradient_checkpointing``): transformers'
  ``gradient_checkpointing_enable`` (non-reentrant; the recomputation replays the RNG, so
  dropout masks are the same), for every backbone. The lean forward does not checkpoint, so it
  is off then, with the reason logged.

:func:`check_dropout_views` is the start check of training that makes its views by dropout.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from csekit.errors import ConfigError, first_line
from csekit.modeling.loading.dropout import dropout_settings, views_differ
from csekit.modeling.speed.train_forward import lean_unsupported

logger = logging.getLogger(__name__)

_PROBE = ["a short probe sentence .", "another one"]


def unused_parameters(encoder: nn.Module) -> list[str]:
    """Names of trainable parameters that get no gradient from a train-mode forward.

    One forward + backward of two short sentences in train mode (the mode training runs in),
    with the global RNG states forked so that the run's random stream is untouched; gradients
    are cleared afterwards.
    """
    from csekit.data.collate import tokenize_pairs

    # The training layout itself (incl. the prompt pooler's per-view templates), so the probe
    # runs exactly the code paths a training step runs.
    batch = tokenize_pairs(encoder.tokenizer, _PROBE, 16, prompt=getattr(encoder, "prompt", None))
    device = next(encoder.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items()}
    was_training = encoder.training
    devices = [device] if device.type == "cuda" else []
    encoder.zero_grad(set_to_none=True)
    try:
        with torch.random.fork_rng(devices=devices):
            encoder.train()
            encoder(**inputs).float().sum().backward()
        return [n for n, p in encoder.named_parameters() if p.requires_grad and p.grad is None]
    finally:
        encoder.zero_grad(set_to_none=True)
        encoder.train(was_training)


# Sub-batches when TrainConfig.length_subbatches is None, by device type: measured on CPU
# (docs/training_speed.md); on accelerators each split costs one host sync for the lengths and
# more kernel launches, unmeasured until benchmarks/gpu_check.sh runs, so one batch there.
AUTO_LENGTH_SUBBATCHES: dict[str, int] = {"cpu": 4}


def resolve_length_subbatches(value: int | None, device: Any = "cpu") -> int:
    """``value`` when set, else the measured default for ``device``'s type (1 if none)."""
    if value is not None:
        return int(value)
    return AUTO_LENGTH_SUBBATCHES.get(torch.device(device).type, 1)


# The lean forward when TrainConfig.lean_forward is None, by device type: on where it was
# measured (CPU: equal to transformers' forward, 1.56x with the sub-batches); elsewhere off
# until benchmarks/gpu_check.sh has recorded its equality and speed on that device.
AUTO_LEAN_FORWARD: dict[str, bool] = {"cpu": True}


def resolve_lean_forward(value: bool | None, device: Any = "cpu") -> bool:
    """``value`` when set, else the measured default for ``device``'s type (off if none)."""
    if value is not None:
        return bool(value)
    return AUTO_LEAN_FORWARD.get(torch.device(device).type, False)


def configure_training_forward(encoder: Any, config: Any, *, ddp_kwargs: Any,
                               world_size: int, device: Any = "cpu") -> None:
    """Apply the speed settings of ``config`` to ``encoder`` before Accelerate prepares it.

    Sets ``encoder.length_subbatches`` (:func:`resolve_length_subbatches` for ``device``) and
    ``encoder.lean_forward`` (:func:`resolve_lean_forward`); sets ``ddp_kwargs.find_unused_parameters`` (the
    ``DistributedDataParallelKwargs`` handed to the Accelerator, read when it wraps the model)
    from :func:`unused_parameters` when ``world_size`` > 1; compiles the backbone in place when
    ``config.compile``.
    """
    encoder.length_subbatches = resolve_length_subbatches(config.length_subbatches, device)
    if getattr(config, "gradient_checkpointing", False):
        backbone = encoder.backbone
        # (transformers 5 renamed it activation checkpointing; the old name warns)
        new = hasattr(backbone, "activation_checkpointing_enable")
        enable = backbone.activation_checkpointing_enable if new else \
            backbone.gradient_checkpointing_enable
        key = "activation_checkpointing_kwargs" if new else "gradient_checkpointing_kwargs"
        try:
            enable(**{key: {"use_reentrant": False}})
        except ValueError as err:  # a model class without checkpointing support
            raise ConfigError(f"--gradient-checkpointing: {first_line(err)}") from err
        encoder.lean_reason = lean_unsupported(encoder.backbone)
    # torch.compile wraps the backbone's forward, which the lean forward does not call
    encoder.lean_forward = resolve_lean_forward(config.lean_forward, device) \
        and not config.compile
    if encoder.lean_forward and encoder.lean_reason is not None:
        logger.info("lean training forward off: %s", encoder.lean_reason)
    if world_size > 1:
        unused = unused_parameters(encoder)
        ddp_kwargs.find_unused_parameters = bool(unused)
        if unused:
            logger.info("DDP: %d parameter(s) get no gradient (%s%s): find_unused_parameters on",
                        len(unused), ", ".join(unused[:3]), ", ..." if len(unused) > 3 else "")
    if config.compile:
        # dynamic shapes: each sub-batch has its own padded length
        encoder.backbone.compile(dynamic=True)
        logger.info("torch.compile: backbone compiled (dynamic shapes)")


def check_dropout_views(encoder: Any, config: Any) -> None:
    """Unsupervised training makes its positive pairs from two dropout masks: check that two
    train-mode forwards of one small batch differ (:func:`views_differ`, RNG untouched).

    Where they do not: ConfigError naming the backbone's dropout settings and what to pass. An
    explicit ``dropout: 0`` is the user's choice (identical views, e.g. for an exactness test):
    a warning. Supervised training (pairs / triplets) is not checked.
    """
    if config.supervision != "unsupervised" or views_differ(encoder):
        return
    backbone = encoder.backbone
    settings = dropout_settings(backbone.config)
    if config.dropout == 0.0:
        logger.warning("dropout 0: the two views of each sentence are identical (%s)", settings)
        return
    what = f"--dropout {config.dropout} did not reach it" if config.dropout else \
        "pass --dropout 0.1 (SimCSE's rate) to set every dropout of the model"
    raise ConfigError(
        f"unsupervised {config.objective} makes its two views by dropout, but two train-mode "
        f"forwards of {type(backbone).__name__} are identical ({settings}): {what}")


__all__ = ["AUTO_LEAN_FORWARD", "AUTO_LENGTH_SUBBATCHES", "check_dropout_views",
           "configure_training_forward", "resolve_lean_forward", "resolve_length_subbatches",
           "unused_parameters"]

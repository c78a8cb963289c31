"""The optimiser and the learning-rate schedule of a run (AdamW, linear warm-up and decay)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def build_optimizer(model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; no weight decay on biases and norm weights.

    Fused kernels where torch has them (CPU since torch 2.4, CUDA), else the foreach loop.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if not any(k in n for k in NO_DECAY)],
         "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in named if any(k in n for k in NO_DECAY)],
         "weight_decay": 0.0},
    ]
    adam = {"lr": cfg.learning_rate, "betas": (cfg.adam_beta1, cfg.adam_beta2),
            "eps": cfg.adam_eps}
    try:
        return torch.optim.AdamW(groups, fused=True, **adam)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, foreach=True, **adam)


def raw_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimiser under Accelerate's wrapper (the wrapper itself when there is none)."""
    return optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer


__all__ = ["NO_DECAY", "build_optimizer", "linear_schedule", "raw_optimizer"]

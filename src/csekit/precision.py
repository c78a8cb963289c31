"""Numeric precisions: the one table of their names and the autocast context for each.

Training, evaluation and encoding all take ``precision`` in :data:`PRECISIONS`. Master weights
stay float32; ``bf16`` / ``fp16`` are autocast on top (fp16 only on CUDA).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from csekit.errors import ConfigError

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device | str | None = None) -> str:
    """Raise a one-line :class:`ConfigError` for an unknown precision or fp16 without CUDA."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device is not None and torch.device(device).type == "cpu":
        raise ConfigError("precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
    return precision


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast for bf16/fp16 (fp16 only on CUDA); a null context for fp32."""
    check_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])

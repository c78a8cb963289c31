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


def tf32_capable(device: torch.device) -> bool:
    """CUDA on Ampere (compute capability 8.0) or newer: TF32 tensor cores exist."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 8


def configure_tf32(device: torch.device, precision: str, enabled: bool) -> bool:
    """TF32 matrix products for an fp32 run on Ampere or newer (``enabled``; ``--no-tf32``
    turns them off). Set explicitly both ways, since it is a process-wide switch. Returns
    whether TF32 is on."""
    on = bool(enabled) and precision == "fp32" and tf32_capable(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on
    return on


@contextlib.contextmanager
def exact_fp32() -> Any:
    """No TF32 inside (full fp32 matrix products, as ``csekit eval`` computes), restored after."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn

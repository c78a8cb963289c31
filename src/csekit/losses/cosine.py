"""Cosine similarity matrices computed in (at least) float32."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from csekit.errors import ConfigError

_EPS = 1e-8


def logits_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16 / fp16 inputs are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All pairwise cosine similarities ``cos(a_i, b_j)``.

    Inputs are upcast to float32 (float64 stays float64) and autocast is switched off for the
    product, so logits are never computed in bf16 / fp16. Rows of zero norm give 0 (their norm
    is clamped at 1e-8, as ``torch.nn.CosineSimilarity`` does).

    Shape:
        a: (n, d), b: (m, d) -> (n, m)
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"cosine_matrix expects (n, d) and (m, d), got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    dtype = logits_dtype(a, b)
    with torch.autocast(device_type=a.device.type, enabled=False):
        an = F.normalize(a.to(dtype), dim=-1, eps=_EPS)
        bn = F.normalize(b.to(dtype), dim=-1, eps=_EPS)
        return an @ bn.T


def check_temperature(temperature: float) -> float:
    """The temperature as a float; a one-line ConfigError (a ValueError) unless it is > 0."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not temperature > 0:
        raise ConfigError(
            f"temperature must be a number > 0 (got {temperature!r}); the published value is 0.05"
        )
    return float(temperature)


def check_margin(margin: float) -> float:
    """Focal-InfoNCE's hardness m as a float; a one-line ConfigError unless 0 <= m < 1."""
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
        raise ConfigError(
            f"margin must be a number in [0, 1) (got {margin!r}); the published value is 0.3"
        )
    return float(margin)


def check_hard_negative_weight(weight: float) -> float:
    """SimCSE's ``hard_negative_weight`` as a float; a one-line ConfigError unless finite."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
            or not math.isfinite(weight):
        raise ConfigError(
            f"hard_negative_weight must be a finite number (got {weight!r}); it is added in log "
            "space to each row's own hard-negative logit, the published value is 0"
        )
    return float(weight)


def add_own_hard_negative_weight(logits: torch.Tensor, weight: float) -> torch.Tensor:
    """Add ``weight`` to column ``B + i`` of row i (row i's own hard negative), as SimCSE's
    supervised ``cl_forward`` adds its ``hard_negative_weight`` to the scaled logits.

    Shape: logits (B, B + H) with H >= B -> (B, B + H); a no-op when ``weight == 0``.
    """
    if weight == 0:
        return logits
    b = logits.shape[0]
    if logits.shape[1] < 2 * b:
        raise ValueError(
            f"hard_negative_weight needs one hard negative per row (H >= B = {b}); "
            f"the logits have only {logits.shape[1] - b} hard-negative columns"
        )
    bonus = torch.zeros_like(logits)
    idx = torch.arange(b, device=logits.device)
    bonus[idx, b + idx] = weight
    return logits + bonus


def check_pair(z1: torch.Tensor, z2: torch.Tensor) -> None:
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must both be (B, d), got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )

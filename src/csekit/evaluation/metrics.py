"""Similarity and correlation maths of the STS evaluation, and alignment / uniformity."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata


def pair_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity in float64; a zero vector gives 0 (SentEval's nan_to_num).

    Shape: (N, d), (N, d) -> (N,).
    """
    a = np.nan_to_num(np.asarray(a, dtype=np.float64))
    b = np.nan_to_num(np.asarray(b, dtype=np.float64))
    num = np.einsum("ij,ij->i", a, b)
    den = np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = num / den
    return np.nan_to_num(cos)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson correlation of the average ranks (ties share their mean rank).

    Shape: (N,), (N,) -> scalar. NaN when either side is constant.
    """
    rx = rankdata(np.asarray(x, dtype=np.float64))
    ry = rankdata(np.asarray(y, dtype=np.float64))
    rx -= rx.mean()
    ry -= ry.mean()
    den = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> float:
    """l_align = E ||f(x) - f(x+)||^alpha over positive pairs, on L2-normalised embeddings.

    Shape: (P, d), (P, d) -> scalar.
    """
    x = torch.nn.functional.normalize(x.double(), dim=-1)
    y = torch.nn.functional.normalize(y.double(), dim=-1)
    return float((x - y).norm(dim=1).pow(alpha).mean())


def uniformity(x: torch.Tensor, t: float = 2.0) -> float:
    """l_uniform = log E_{i<j} exp(-t ||f(x_i) - f(x_j)||^2) on L2-normalised embeddings.

    Shape: (N, d) -> scalar.
    """
    x = torch.nn.functional.normalize(x.double(), dim=-1)
    return float(torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log())

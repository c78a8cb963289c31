"""Similarity and correlation maths of the STS evaluation, and alignment / uniformity.

Ranks are computed here with numpy rather than ``scipy.stats`` (same definition: ties share
their mean rank), because importing ``scipy.stats`` costs over a second of every ``csekit eval``.
"""

from __future__ import annotations

import numpy as np
import torch


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


def average_ranks(a: np.ndarray) -> np.ndarray:
    """1-based ranks in float64, tied values sharing the mean of their ranks.

    Shape: (N,) -> (N,).
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    # first index (in sorted order) of each group of tied values
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    bounds = np.r_[starts, a.size]
    group_rank = 0.5 * (bounds[:-1] + bounds[1:] + 1)  # mean of ranks start+1 .. end
    group_of_sorted = np.repeat(np.arange(starts.size), np.diff(bounds))
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = group_rank[group_of_sorted]
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson correlation of the average ranks (ties share their mean rank).

    Shape: (N,), (N,) -> scalar. NaN when either side is constant or holds a NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if np.isnan(x).any() or np.isnan(y).any():
        return float("nan")
    rx = average_ranks(x)
    ry = average_ranks(y)
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

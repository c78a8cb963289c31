"""Supervised (NLI triplet) losses against brute-force float64 loops, gradients included.

The oracle is supervised SimCSE's ``cl_forward`` written out row by row: logits
``cos(z1_i, [z2; z3]_j) / T`` (B x 2B), target i, and ``hard_negative_weight`` w added in log
space to row i's own hard negative (column B + i). For Focal-InfoNCE every negative logit, the
z3 block included, is ``(s + m) s / T`` and the positive ``s^2 / T``; w is added after the
modulation. The loops are written with scalar float64 torch operations, so autograd through the
loop gives the oracle gradients too.
"""

from __future__ import annotations

import math

import pytest
import torch

from csekit.errors import ConfigError
from csekit.losses import focal_info_nce, info_nce

T = 0.05


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos of two (d,) float64 vectors, one pair at a time."""
    return torch.dot(a, b) / torch.sqrt(torch.dot(a, a) * torch.dot(b, b))


def loop_loss(z1, z2, z3, *, t=T, w=0.0, focal=False, m=0.3, extra=None) -> torch.Tensor:
    """Mean over rows i of -log softmax(row_i)[i]; ``extra`` are further negatives (no weight)."""
    b = z1.shape[0]
    negs = [z3[j] for j in range(b)] + ([extra[j] for j in range(extra.shape[0])]
                                        if extra is not None else [])
    total = torch.zeros((), dtype=torch.float64)
    for i in range(b):
        row = []
        for j in range(b):
            s = _cos(z1[i], z2[j])
            if focal:
                row.append(s * s / t if i == j else (s + m) * s / t)
            else:
                row.append(s / t)
        for j, h in enumerate(negs):
            s = _cos(z1[i], h)
            logit = (s + m) * s / t if focal else s / t
            if j == i:  # row i's own hard negative: column B + i
                logit = logit + w
            row.append(logit)
        mx = max(float(v.detach()) for v in row)
        lse = mx + torch.log(sum(torch.exp(v - mx) for v in row))
        total = total + (lse - row[i])
    return total / b


def _triplet(b=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, d, generator=g, dtype=torch.float64)
    z2 = z1 + 0.7 * torch.randn(b, d, generator=g, dtype=torch.float64)
    z3 = z1 + 1.2 * torch.randn(b, d, generator=g, dtype=torch.float64)  # harder than random
    return [x.requires_grad_(True) for x in (z1, z2, z3)]


def _loss(kind, z1, z2, z3, w, extra=None):
    h = z3 if extra is None else torch.cat([z3, extra])
    if kind == "focal":
        return focal_info_nce(z1, z2, temperature=T, margin=0.3, hard_negatives=h,
                              hard_negative_weight=w)
    return info_nce(z1, z2, temperature=T, hard_negatives=h, hard_negative_weight=w)


@pytest.mark.parametrize("kind", ["infonce", "focal"])
@pytest.mark.parametrize("w", [0.0, 0.7, -1.3])
@pytest.mark.parametrize("with_extra", [False, True], ids=["nli", "nli+centroids"])
def test_supervised_loss_and_gradients_equal_the_loop(kind, w, with_extra):
    z1, z2, z3 = _triplet(seed=int(10 * abs(w)) + with_extra)
    extra = None
    if with_extra:  # ClusterNS' centroid block after the NLI block: (B, d), constant
        extra = torch.randn(z1.shape[0], z1.shape[1], dtype=torch.float64,
                            generator=torch.Generator().manual_seed(5))
    got = _loss(kind, z1, z2, z3, w, extra)
    want = loop_loss(z1, z2, z3, w=w, focal=kind == "focal", extra=extra)
    assert got.item() == pytest.approx(want.item(), rel=1e-12, abs=1e-12)
    g_got = torch.autograd.grad(got, (z1, z2, z3))
    g_want = torch.autograd.grad(want, (z1, z2, z3))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["infonce", "focal"])
@pytest.mark.parametrize("w", [0.0, 0.9])
def test_gradcheck_supervised(kind, w):
    z1, z2, z3 = _triplet(b=4, d=3, seed=3)
    assert torch.autograd.gradcheck(lambda a, b, c: _loss(kind, a, b, c, w), (z1, z2, z3))


def test_weight_only_touches_the_own_hard_negative():
    """A huge weight on column B+i pushes the loss to w + (own hard logit - positive logit)."""
    z1, z2, z3 = (x.detach() for x in _triplet(b=5, seed=4))
    w = 200.0
    b = z1.shape[0]
    cos = torch.nn.functional.cosine_similarity
    want = torch.stack([w + cos(z1[i], z3[i], dim=0) / T - cos(z1[i], z2[i], dim=0) / T
                        for i in range(b)]).mean()
    got = info_nce(z1, z2, hard_negatives=z3, hard_negative_weight=w)
    assert got.item() == pytest.approx(want.item(), rel=1e-9)


@pytest.mark.parametrize("b", [2, 7])
def test_collinear_limits_with_weight(b):
    z = torch.randn(1, 6, dtype=torch.float64).repeat(b, 1)
    w, m = 0.4, 0.3
    assert info_nce(z, z, hard_negatives=z, hard_negative_weight=w).item() == pytest.approx(
        math.log(2 * b - 1 + math.exp(w)), rel=1e-12)
    # focal: positive 1/T, each negative (1 + m)/T, the own hard negative (1 + m)/T + w
    want = math.log1p((2 * b - 2) * math.exp(m / T) + math.exp(m / T + w))
    assert focal_info_nce(z, z, margin=m, hard_negatives=z,
                          hard_negative_weight=w).item() == pytest.approx(want, rel=1e-12)


def test_hard_negative_identical_to_positive_bounds_the_loss_by_log2():
    """h_i = z2_i: the own hard negative ties with the positive, so L >= log 2 for any z."""
    z1, z2, _ = (x.detach() for x in _triplet(seed=8))
    for scale in (1.0, 10.0):
        z1s = z2 + (z1 - z2) / scale  # anchors approaching their positives
        loss = info_nce(z1s, z2, hard_negatives=z2).item()
        assert loss >= math.log(2) - 1e-12
    assert info_nce(z2, z2, hard_negatives=z2, temperature=1e-3).item() == pytest.approx(
        math.log(2), abs=1e-6)


def test_weight_needs_row_aligned_hard_negatives_and_a_number():
    z1, z2, z3 = (x.detach() for x in _triplet(b=6))
    with pytest.raises(ValueError, match="H >= B"):
        info_nce(z1, z2, hard_negatives=z3[:3], hard_negative_weight=0.5)
    with pytest.raises(ValueError, match="H >= B"):
        focal_info_nce(z1, z2, hard_negatives=z3[:3], hard_negative_weight=0.5)
    # fewer hard negatives are fine without a weight (ClusterNS-like use)
    info_nce(z1, z2, hard_negatives=z3[:3])
    for bad in (float("nan"), float("inf"), True, "1"):
        with pytest.raises(ConfigError):
            info_nce(z1, z2, hard_negatives=z3, hard_negative_weight=bad)

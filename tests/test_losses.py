"""Oracles for csekit.losses: brute-force float64 loops, gradchecks, exact limits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from csekit.losses import bidirectional_margin_loss, cosine_matrix, focal_info_nce, info_nce

T = 0.05


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb)


def _rows(x: torch.Tensor) -> list[list[float]]:
    return x.double().tolist()


def _ce(logits_row: list[float], target: int) -> float:
    mx = max(logits_row)
    lse = mx + math.log(sum(math.exp(v - mx) for v in logits_row))
    return lse - logits_row[target]


def loop_info_nce(z1, z2, t=T, h=None) -> float:
    a, b = _rows(z1), _rows(z2)
    hh = _rows(h) if h is not None else []
    total = 0.0
    for i in range(len(a)):
        row = [_cos(a[i], b[j]) / t for j in range(len(b))]
        row += [_cos(a[i], hj) / t for hj in hh]
        total += _ce(row, i)
    return total / len(a)


def loop_focal(z1, z2, t=T, m=0.3, h=None) -> float:
    a, b = _rows(z1), _rows(z2)
    hh = _rows(h) if h is not None else []
    total = 0.0
    for i in range(len(a)):
        row = []
        for j in range(len(b)):
            s = _cos(a[i], b[j])
            row.append(s * s / t if i == j else (s + m) * s / t)
        for hj in hh:
            s = _cos(a[i], hj)
            row.append((s + m) * s / t)
        total += _ce(row, i)
    return total / len(a)


def loop_bml(z1, z2, mask, alpha, beta, reduction="all") -> float:
    a, b = _rows(z1), _rows(z2)
    n = len(a)
    total, pairs = 0.0, 0
    for i in range(n):
        for j in range(n):
            mij = 1.0 if bool(mask[i, j]) else 0.0
            d = mij * (_cos(a[i], b[j]) - _cos(a[i], b[i]))
            term = max(d + alpha, 0.0) + max(-d - beta, 0.0)
            if reduction == "all":
                total += term
            elif mij:
                total += term
                pairs += 1
    return total / (n * n) if reduction == "all" else total / max(pairs, 1)


def _views(b=12, d=16, noise=0.6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, d, generator=g, dtype=torch.float64)
    z2 = z1 + noise * torch.randn(b, d, generator=g, dtype=torch.float64)
    h = torch.randn(b, d, generator=g, dtype=torch.float64)
    return z1.to(dtype), z2.to(dtype), h.to(dtype)


def _mask(b=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (b,), generator=g)
    m = labels[:, None] == labels[None, :]
    m.fill_diagonal_(False)
    assert m.any()
    return m


def test_cosine_matrix_matches_torch_cosine_similarity():
    z1, z2, _ = _views()
    ref = F.cosine_similarity(z1.unsqueeze(1), z2.unsqueeze(0), dim=-1)
    assert torch.allclose(cosine_matrix(z1, z2), ref, atol=1e-6)


@pytest.mark.parametrize("with_h", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_info_nce_matches_loop(with_h, dtype, tol):
    z1, z2, h = _views(dtype=dtype)
    h = h if with_h else None
    got = info_nce(z1, z2, temperature=T, hard_negatives=h).item()
    want = loop_info_nce(z1, z2, T, h)
    assert got == pytest.approx(want, rel=tol, abs=tol)


@pytest.mark.parametrize("with_h", [False, True])
@pytest.mark.parametrize("margin", [0.3, 0.0, 0.7])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_focal_matches_loop(with_h, margin, dtype, tol):
    z1, z2, h = _views(dtype=dtype, seed=3)
    h = h if with_h else None
    got = focal_info_nce(z1, z2, temperature=T, margin=margin, hard_negatives=h).item()
    want = loop_focal(z1, z2, T, margin, h)
    assert got == pytest.approx(want, rel=tol, abs=tol)


@pytest.mark.parametrize("alpha,beta", [(0.2, 0.5), (0.0, 0.3), (0.25, 0.3), (-0.1, 0.05)])
@pytest.mark.parametrize("reduction", ["all", "pairs"])
def test_bml_matches_loop(alpha, beta, reduction):
    z1, z2, _ = _views(seed=5)
    mask = _mask()
    got = bidirectional_margin_loss(
        z1, z2, mask, alpha=alpha, beta=beta, reduction=reduction
    ).item()
    want = loop_bml(z1, z2, mask, alpha, beta, reduction)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_bml_quirk_all_reduction_has_constant_offset_without_pairs():
    z1, z2, _ = _views(seed=6)
    empty = torch.zeros(12, 12, dtype=torch.bool)
    # no pair: every entry contributes ReLU(alpha) + ReLU(-beta) = alpha (alpha, beta > 0)
    assert bidirectional_margin_loss(z1, z2, empty, alpha=0.2, beta=0.5).item() == pytest.approx(
        0.2
    )
    assert (
        bidirectional_margin_loss(z1, z2, empty, alpha=0.2, beta=0.5, reduction="pairs").item()
        == 0.0
    )


def test_gradcheck_all_losses():
    z1, z2, h = _views(b=4, d=3, dtype=torch.float64, seed=7)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    h.requires_grad_(True)
    mask = _mask(b=4, seed=2)
    assert torch.autograd.gradcheck(lambda a, b, c: info_nce(a, b, hard_negatives=c), (z1, z2, h))
    assert torch.autograd.gradcheck(
        lambda a, b, c: focal_info_nce(a, b, hard_negatives=c), (z1, z2, h)
    )
    assert torch.autograd.gradcheck(lambda a, b: focal_info_nce(a, b, margin=0.0), (z1, z2))
    for red in ("all", "pairs"):
        assert torch.autograd.gradcheck(
            lambda a, b, red=red: bidirectional_margin_loss(
                a, b, mask, alpha=0.2, beta=0.5, reduction=red
            ),
            (z1, z2),
        )


@pytest.mark.parametrize("b", [2, 8, 33])
def test_collinear_limits(b):
    v = torch.randn(1, 7, dtype=torch.float64)
    z = v.repeat(b, 1) * torch.rand(b, 1, dtype=torch.float64).add(
        0.5
    )  # same direction, other norms
    m = 0.3
    assert info_nce(z, z).item() == pytest.approx(math.log(b), rel=1e-12)
    assert info_nce(z, z, hard_negatives=z).item() == pytest.approx(math.log(2 * b), rel=1e-12)
    assert focal_info_nce(z, z, margin=m).item() == pytest.approx(
        math.log1p((b - 1) * math.exp(m / T)), rel=1e-12
    )
    assert focal_info_nce(z, z, margin=m, hard_negatives=z).item() == pytest.approx(
        math.log1p((2 * b - 1) * math.exp(m / T)), rel=1e-12
    )


def _equicorrelated(b: int, c: float) -> torch.Tensor:
    """b unit vectors with pairwise cosine exactly c (c >= 0)."""
    eye = torch.eye(b, dtype=torch.float64)
    return torch.cat(
        [torch.full((b, 1), math.sqrt(c), dtype=torch.float64), math.sqrt(1 - c) * eye], dim=1
    )


@pytest.mark.parametrize("m", [0.3, 0.1, 0.5])
def test_focal_equals_infonce_where_negatives_sit_at_one_minus_m(m):
    # positives at s = 1 and negatives at s = 1 - m: every focal logit equals its InfoNCE logit
    b = 9
    z = _equicorrelated(b, 1 - m)
    s = cosine_matrix(z, z)
    assert torch.allclose(
        s[~torch.eye(b, dtype=torch.bool)], torch.full((b * b - b,), 1 - m, dtype=torch.float64)
    )
    want = math.log1p((b - 1) * math.exp(-m / T))
    assert info_nce(z, z).item() == pytest.approx(want, rel=1e-10)
    assert focal_info_nce(z, z, margin=m).item() == pytest.approx(want, rel=1e-10)


def test_focal_equals_infonce_on_orthogonal_negatives_for_any_margin():
    b = 6
    z = torch.eye(b, dtype=torch.float64)
    want = math.log1p((b - 1) * math.exp(-1 / T))
    for m in (0.0, 0.3, 0.9):
        assert focal_info_nce(z, z, margin=m).item() == pytest.approx(want, rel=1e-12)
    assert info_nce(z, z).item() == pytest.approx(want, rel=1e-12)


def test_focal_upweights_hard_and_downweights_easy_negatives():
    # with s_ii = 1: negatives above 1 - m give a larger loss than InfoNCE, below it a smaller one
    m, b = 0.3, 7
    for c, sign in ((0.9, 1), (0.4, -1)):
        z = _equicorrelated(b, c)
        diff = focal_info_nce(z, z, margin=m).item() - info_nce(z, z).item()
        assert sign * diff > 0


def _two_on_circle(s: float) -> torch.Tensor:
    return torch.tensor([[1.0, 0.0], [s, math.sqrt(1 - s * s)]], dtype=torch.float64)


def test_focal_negative_logit_minimum_at_minus_half_margin():
    # two samples on a circle, cosine s between them: the loss is minimised at s = -m/2
    m = 0.3

    def focal(s: float) -> float:
        z = _two_on_circle(s)
        return focal_info_nce(z, z, margin=m).item()

    grid = [-1 + 2 * k / 200 for k in range(1, 200)]
    vals = [focal(s) for s in grid]
    best_s = grid[vals.index(min(vals))]
    assert best_s == pytest.approx(-m / 2, abs=6e-3)
    # the derivative in s vanishes exactly there
    s = torch.tensor(-m / 2, dtype=torch.float64, requires_grad=True)
    z = torch.stack(
        [
            torch.stack([torch.ones_like(s), torch.zeros_like(s)]),
            torch.stack([s, torch.sqrt(1 - s * s)]),
        ]
    )
    (grad,) = torch.autograd.grad(focal_info_nce(z, z, margin=m), s)
    assert abs(grad.item()) < 1e-9
    # InfoNCE, by contrast, keeps decreasing down to s = -1
    z_far, z_mid = _two_on_circle(-1.0), _two_on_circle(-m / 2)
    assert info_nce(z_far, z_far).item() < info_nce(z_mid, z_mid).item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_give_float32_logits(dtype):
    z1, z2, h = _views(seed=8)
    z1l, z2l, hl = z1.to(dtype), z2.to(dtype), h.to(dtype)
    assert cosine_matrix(z1l, z2l).dtype == torch.float32
    for fn in (info_nce, focal_info_nce):
        got = fn(z1l, z2l, hard_negatives=hl)
        assert got.dtype == torch.float32
        ref = fn(z1l.float(), z2l.float(), hard_negatives=hl.float())
        assert got.item() == pytest.approx(ref.item(), rel=1e-6)


def test_autocast_does_not_lower_logit_precision():
    z1, z2, _ = _views(seed=9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = cosine_matrix(z1, z2)
        loss = info_nce(z1, z2)
    assert s.dtype == torch.float32
    assert loss.item() == pytest.approx(info_nce(z1, z2).item(), rel=1e-6)


def test_bad_arguments_raise():
    z1, z2, _ = _views()
    with pytest.raises(ValueError):
        info_nce(z1, z2, temperature=-0.05)
    with pytest.raises(ValueError):
        focal_info_nce(z1, z2[:5])
    with pytest.raises(ValueError):
        bidirectional_margin_loss(z1, z2, torch.zeros(3, 3, dtype=torch.bool), alpha=0.2, beta=0.5)
    with pytest.raises(ValueError):
        bidirectional_margin_loss(z1, z2, _mask(), alpha=0.2, beta=0.5, reduction="sum")

"""Oracles for csekit.clustering: loops over the published definitions."""

from __future__ import annotations

import math

import pytest
import torch

from csekit.clustering import (
    ClusterState,
    apply_momentum,
    assign,
    cluster_sums,
    false_negative_mask,
    greedy_chain_init,
    hard_negatives,
    kmeanspp_init,
    momentum_update,
    nearest_two,
)
from csekit.errors import ConfigError


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (
        math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    )


def _data(b=20, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, d, generator=g)
    z2 = z1 + 0.5 * torch.randn(b, d, generator=g)
    return z1, z2


def loop_greedy_chain(z1, z2, k, first):
    a, b = z1.tolist(), z2.tolist()
    chosen = [first]
    for _ in range(1, k):
        prev = chosen[-1]
        best_j, best = None, float("inf")
        for j in range(len(b)):
            if j in chosen:
                continue
            c = _cos(a[prev], b[j])
            if c < best:
                best_j, best = j, c
        chosen.append(best_j)
    return chosen


@pytest.mark.parametrize("first", [0, 7, 19])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_greedy_chain_matches_loop(first, k):
    z1, z2 = _data()
    got = greedy_chain_init(z1, z2, k, first_index=first)
    idx = loop_greedy_chain(z1, z2, k, first)
    assert len(set(idx)) == k
    assert got.dtype == torch.float32
    assert torch.equal(got, z1[idx])


def test_greedy_chain_rejects_k_above_batch():
    z1, z2 = _data(b=4)
    with pytest.raises(ValueError):
        greedy_chain_init(z1, z2, 5, first_index=0)


def loop_nearest(z, c):
    out = []
    for row in z.tolist():
        sims = [_cos(row, cj) for cj in c.tolist()]
        order = sorted(range(len(sims)), key=lambda j: -sims[j])
        out.append((order[0], order[1]))
    return out


def test_assign_hard_negatives_and_mask_match_loops():
    z, _ = _data(b=30, seed=1)
    c = torch.randn(5, 6, generator=torch.Generator().manual_seed(2))
    ref = loop_nearest(z, c)
    first, second = nearest_two(z, c)
    assert first.tolist() == [r[0] for r in ref]
    assert second.tolist() == [r[1] for r in ref]
    assert assign(z, c).tolist() == [r[0] for r in ref]
    assert torch.equal(hard_negatives(z, c), c[[r[1] for r in ref]])
    mask = false_negative_mask(first)
    for i in range(30):
        for j in range(30):
            assert bool(mask[i, j]) == (i != j and ref[i][0] == ref[j][0])


def loop_momentum(c, z, lr, rule):
    cl, zl = c.tolist(), z.tolist()
    k, d = len(cl), len(cl[0])
    members = {j: [] for j in range(k)}
    for row in zl:
        sims = [_cos(row, cj) for cj in cl]
        members[max(range(k), key=lambda j: sims[j])].append(row)
    out = []
    for j in range(k):
        if not members[j]:
            out.append(cl[j])
            continue
        s = [sum(r[t] for r in members[j]) for t in range(d)]
        if rule == "mean":
            s = [v / len(members[j]) for v in s]
        out.append([lr * s[t] + (1 - lr) * cl[j][t] for t in range(d)])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("rule", ["sum", "mean"])
@pytest.mark.parametrize("lr", [1e-3, 0.5, 1.0])
def test_momentum_update_matches_loop(rule, lr):
    z, _ = _data(b=25, seed=3)
    # 8 centroids, some of which stay empty (far from the data direction)
    c = torch.randn(8, 6, generator=torch.Generator().manual_seed(4))
    got = momentum_update(c, z, lr=lr, rule=rule)
    want = loop_momentum(c, z, lr, rule)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-6)
    counts = torch.bincount(assign(z, c), minlength=8)
    assert (counts == 0).any(), "test wants at least one empty cluster"
    assert torch.equal(got[counts == 0], c[counts == 0])
    assert not torch.equal(got[counts > 0], c[counts > 0])


def test_cluster_sums_split_equals_whole():
    # the distributed update relies on: sums/counts of shards add up to those of the batch
    z, _ = _data(b=24, seed=5)
    c = torch.randn(4, 6, generator=torch.Generator().manual_seed(6))
    s_all, n_all = cluster_sums(z, c)
    s_a, n_a = cluster_sums(z[:12], c)
    s_b, n_b = cluster_sums(z[12:], c)
    assert torch.allclose(s_a + s_b, s_all, atol=1e-6)
    assert torch.equal(n_a + n_b, n_all)
    assert torch.allclose(
        apply_momentum(c, s_a + s_b, n_a + n_b, lr=0.1), momentum_update(c, z, lr=0.1), atol=1e-6
    )


def test_momentum_update_keeps_float32_under_bf16_inputs():
    z, _ = _data(b=16, seed=7)
    c = torch.randn(4, 6)
    out = momentum_update(c, z.to(torch.bfloat16), lr=0.1)
    assert out.dtype == torch.float32
    ref = momentum_update(c, z.to(torch.bfloat16).float(), lr=0.1)
    assert torch.equal(out, ref)


def test_kmeanspp_init_is_seeded_and_picks_distinct_rows():
    z, _ = _data(b=30, seed=8)
    a = kmeanspp_init(z, 10, generator=torch.Generator().manual_seed(1))
    b = kmeanspp_init(z, 10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    rows = [int((z == r).all(dim=1).nonzero()) for r in a]
    assert len(set(rows)) == 10
    # duplicates in the batch cannot be chosen twice while distinct rows remain
    dup = z[:3].repeat(10, 1)
    c = kmeanspp_init(dup, 3, generator=torch.Generator().manual_seed(0))
    assert torch.linalg.matrix_rank(c) == 3


def test_cluster_state_round_trip_and_fp32():
    z1, z2 = _data(b=16, seed=9)
    st = ClusterState(4, seed=3)
    assert not st.is_started and st.centroids.numel() == 0
    st.initialize(z1, z2)
    st.update(z1, lr=0.01)
    sd = st.state_dict()
    assert set(sd) == {"centroids", "started"}
    other = ClusterState(4, seed=99)
    other.load_state_dict(sd)
    assert other.is_started and torch.equal(other.centroids, st.centroids)
    st.to(torch.bfloat16)
    assert st.centroids.dtype == torch.float32
    assert torch.equal(st.centroids, other.centroids)
    with pytest.raises(ConfigError):
        ClusterState(5).load_state_dict(sd)


def test_cluster_state_init_uses_seeded_first_index():
    z1, z2 = _data(b=16, seed=10)
    st = ClusterState(6, seed=11)
    st.initialize(z1, z2)
    first = int(torch.randint(16, (1,), generator=torch.Generator().manual_seed(11)))
    assert torch.equal(st.centroids, greedy_chain_init(z1, z2, 6, first_index=first))
    with pytest.raises(ConfigError):
        ClusterState(17).initialize(z1, z2)

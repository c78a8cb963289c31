"""Oracles for csekit.objectives: the ClusterNS lifecycle re-done with loops, limits, state."""

from __future__ import annotations

import math

import pytest
import torch
from test_clustering import loop_greedy_chain, loop_momentum, loop_nearest
from test_losses import _cos, loop_bml, loop_focal, loop_info_nce

from csekit.errors import ConfigError
from csekit.losses import focal_info_nce, info_nce
from csekit.objectives import (
    ClusterNS,
    ClusterNSFocal,
    FocalInfoNCE,
    ObjectiveOutput,
    SimCSE,
    build_objective,
    clusterns_loss,
)

B, D, K = 16, 8, 4


def _batch(step: int, shared: float, b: int = B, seed: int = 0):
    """Two views; ``shared`` scales a common direction, so it drives the mean cosine."""
    g = torch.Generator().manual_seed(1000 * seed + step)
    u = torch.randn(1, D, generator=g)
    z1 = shared * u + torch.randn(b, D, generator=g)
    z2 = z1 + 0.3 * torch.randn(b, D, generator=g)
    return z1, z2


def _mean_cos(z1, z2) -> float:
    a, b = z1.tolist(), z2.tolist()
    return sum(_cos(x, y) for x in a for y in b) / (len(a) * len(b))


class LoopClusterNS:
    """The ClusterNS lifecycle of REFERENCE.md, written with plain loops (float64)."""

    def __init__(
        self,
        *,
        focal=False,
        start=0.4,
        lr=1e-3,
        bml_weight=1e-4,
        alpha=0.2,
        beta=0.5,
        seed=0,
        T=0.05,
        m=0.3,
    ):
        self.focal, self.start, self.lr, self.w = focal, start, lr, bml_weight
        self.alpha, self.beta, self.seed, self.T, self.m = alpha, beta, seed, T, m
        self.c = None

    def step(self, z1, z2) -> float:
        z1, z2 = z1.double(), z2.double()
        if self.c is None:
            loss = (
                loop_focal(z1, z2, self.T, self.m) if self.focal else loop_info_nce(z1, z2, self.T)
            )
            if _mean_cos(z1, z2) <= self.start:
                first = int(
                    torch.randint(
                        z1.shape[0], (1,), generator=torch.Generator().manual_seed(self.seed)
                    )
                )
                self.c = z1[loop_greedy_chain(z1, z2, K, first)]
            return loss
        self.c = loop_momentum(self.c, z1, self.lr, "sum")
        near = loop_nearest(z1, self.c)
        h = self.c[[n[1] for n in near]]
        loss = (
            loop_focal(z1, z2, self.T, self.m, h)
            if self.focal
            else loop_info_nce(z1, z2, self.T, h)
        )
        mask = torch.tensor(
            [
                [i != j and near[i][0] == near[j][0] for j in range(len(near))]
                for i in range(len(near))
            ]
        )
        return loss + self.w * loop_bml(z1, z2, mask, self.alpha, self.beta)


SCHEDULE = [3.0, 3.0, 0.0, 3.0, 0.0, 0.5]  # mean cosine high, high, low (start), ...


@pytest.mark.parametrize("focal", [False, True])
def test_clusterns_lifecycle_matches_loop_oracle(focal):
    kw = {"bml_weight": 0.05, "alpha": 0.2, "beta": 0.5}  # a visible margin term
    obj = build_objective("clusterns-focal" if focal else "clusterns", n_clusters=K, seed=5, **kw)
    ref = LoopClusterNS(focal=focal, seed=5, **kw)
    started = []
    for step, shared in enumerate(SCHEDULE):
        z1, z2 = _batch(step, shared)
        out = obj(z1, z2)
        want = ref.step(z1, z2)
        assert out.loss.item() == pytest.approx(want, rel=2e-5, abs=2e-5), f"step {step}"
        started.append(out.stat_floats()["started"])
        if ref.c is not None:
            assert torch.allclose(obj.centroids.double(), ref.c, rtol=1e-5, atol=1e-5)
    assert _mean_cos(*_batch(0, 3.0)) > 0.4 >= _mean_cos(*_batch(2, 0.0))
    assert started == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]


def test_start_criterion_fires_once_and_init_step_is_plain_simcse(monkeypatch):
    obj = ClusterNS(n_clusters=K)
    calls = []
    original = obj.clusters.initialize
    monkeypatch.setattr(obj.clusters, "initialize", lambda a, b: (calls.append(1), original(a, b)))
    simcse = SimCSE()
    for step, shared in enumerate(SCHEDULE):
        z1, z2 = _batch(step, shared)
        out = obj(z1, z2)
        if step <= 2:  # before the start and on the init step itself: plain SimCSE
            assert out.loss.item() == simcse(z1, z2).loss.item()
        else:
            assert out.loss.item() != simcse(z1, z2).loss.item()
    assert calls == [1]


@pytest.mark.parametrize("start", [-1.0, 1.0])
def test_start_threshold_extremes(start):
    obj = ClusterNS(n_clusters=K, kmeans_start_cosine=start)
    for step in range(3):
        obj(*_batch(step, 0.0))
    assert obj.started == (start == 1.0)


@pytest.mark.parametrize("focal", [False, True])
def test_clusterns_without_hard_negatives_and_bml_equals_plain(focal):
    obj = ClusterNS(
        loss="focal" if focal else "infonce",
        n_clusters=K,
        hard_negatives=False,
        bml_weight=0.0,
        kmeans_start_cosine=1.0,
    )
    plain = FocalInfoNCE() if focal else SimCSE()
    for step in range(5):
        z1, z2 = _batch(step, 1.0)
        got, want = obj(z1, z2), plain(z1, z2)
        assert got.loss.item() == pytest.approx(want.loss.item(), rel=1e-7)
    assert obj.started


def test_module_step_is_update_then_functional_loss():
    obj = ClusterNS(n_clusters=K, kmeans_start_cosine=1.0)
    obj(*_batch(0, 1.0))
    for step in range(1, 4):
        z1, z2 = _batch(step, 1.0)
        before = obj.centroids.clone()
        out = obj(z1, z2)
        from csekit.clustering import momentum_update

        updated = momentum_update(before, z1, lr=1e-3)
        assert torch.equal(obj.centroids, updated)
        assert out.loss.item() == pytest.approx(clusterns_loss(z1, z2, updated).item(), rel=1e-7)


def test_clusterns_loss_matches_loop_and_gradcheck():
    z1, z2 = _batch(0, 0.5)
    c = torch.randn(K, D, generator=torch.Generator().manual_seed(3))
    near = loop_nearest(z1, c)
    h = c[[n[1] for n in near]]
    mask = torch.tensor([[i != j and near[i][0] == near[j][0] for j in range(B)] for i in range(B)])
    want = loop_info_nce(z1, z2, 0.05, h) + 0.3 * loop_bml(z1, z2, mask, 0.1, 0.4)
    got = clusterns_loss(z1, z2, c, temperature=0.05, bml_weight=0.3, alpha=0.1, beta=0.4)
    assert got.item() == pytest.approx(want, rel=1e-5)
    a = z1[:6].double().requires_grad_(True)
    b = z2[:6].double().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, y: clusterns_loss(x, y, c.double(), bml_weight=0.5), (a, b)
    )


def test_stats_match_loops():
    obj = ClusterNS(n_clusters=K, kmeans_start_cosine=1.0, bml_weight=0.0)
    z1, z2 = _batch(0, 1.0)
    out = obj(z1, z2)
    assert isinstance(out, ObjectiveOutput)
    a, b = z1.tolist(), z2.tolist()
    pos = sum(_cos(a[i], b[i]) for i in range(B)) / B
    neg = sum(_cos(a[i], b[j]) for i in range(B) for j in range(B) if i != j) / (B * (B - 1))
    st = out.stat_floats()
    assert st["pos_cos"] == pytest.approx(pos, rel=1e-5)
    assert st["neg_cos"] == pytest.approx(neg, rel=1e-4, abs=1e-6)
    z1, z2 = _batch(1, 1.0)
    out = obj(z1, z2)
    near = [n[0] for n in loop_nearest(z1, obj.centroids)]
    sizes = [near.count(k) for k in range(K)]
    # tensor stats stay on the device (no host sync inside forward); read once, as floats
    assert isinstance(out.stats["n_false_neg"], torch.Tensor)
    st = out.stat_floats()
    assert list(st) == list(out.stats) and all(isinstance(v, float) for v in st.values())
    assert st["n_false_neg"] == sum(s * (s - 1) for s in sizes)
    assert st["cluster_size_max"] == max(sizes)
    assert st["cluster_size_min"] == min(s for s in sizes if s)
    assert st["clusters_empty"] == sizes.count(0)


@pytest.mark.parametrize("name", ["clusterns", "clusterns-focal"])
@pytest.mark.parametrize("restore_at", [1, 3])  # before the start, after it
def test_state_dict_round_trip_continues_exactly(name, restore_at):
    opts = {"n_clusters": K, "bml_weight": 0.01, "update_rule": "sum"}
    a = build_objective(name, **opts)
    losses_a, losses_b = [], []
    b = None
    for step, shared in enumerate(SCHEDULE):
        z1, z2 = _batch(step, shared)
        losses_a.append(a(z1, z2).loss.item())
        if step == restore_at - 1:
            state = {k: v.clone() for k, v in a.state_dict().items()}
            b = build_objective(name, **opts)
            b.load_state_dict(state)
        elif b is not None:
            losses_b.append(b(z1, z2).loss.item())
    assert losses_b == losses_a[restore_at:]
    assert torch.equal(a.centroids, b.centroids)
    assert a.started and b.started


def test_state_dict_is_fp32_and_survives_torch_save(tmp_path):
    obj = ClusterNSFocal(n_clusters=K, kmeans_start_cosine=1.0)
    for step in range(3):
        z1, z2 = _batch(step, 1.0)
        out = obj(z1.to(torch.bfloat16), z2.to(torch.bfloat16))
        assert out.loss.dtype == torch.float32
    assert obj.centroids.dtype == torch.float32
    obj.to(torch.bfloat16)
    assert obj.centroids.dtype == torch.float32
    torch.save(obj.state_dict(), tmp_path / "obj.pt")
    other = ClusterNSFocal(n_clusters=K)
    other.load_state_dict(torch.load(tmp_path / "obj.pt", weights_only=True))
    assert torch.equal(other.centroids, obj.centroids) and other.started


def test_bml_pairs_reduction_and_mean_rule_are_wired():
    z = [_batch(s, 1.0) for s in range(3)]
    runs = {}
    for opt in ({}, {"bml_reduction": "pairs"}, {"update_rule": "mean"}, {"init": "kmeans++"}):
        obj = ClusterNS(n_clusters=K, kmeans_start_cosine=1.0, bml_weight=0.5, **opt)
        runs[str(opt)] = [obj(*zz).loss.item() for zz in z]
    vals = list(runs.values())
    assert all(v[0] == vals[0][0] for v in vals)  # first step: plain SimCSE for all
    assert len({tuple(v[1:]) for v in vals}) == 4


def test_simcse_and_focal_modules_equal_functions():
    z1, z2 = _batch(0, 1.0)
    assert SimCSE(0.1)(z1, z2).loss.item() == info_nce(z1, z2, temperature=0.1).item()
    assert (
        FocalInfoNCE(0.1, 0.2)(z1, z2).loss.item()
        == focal_info_nce(z1, z2, temperature=0.1, margin=0.2).item()
    )


def test_gradients_flow_to_both_views():
    z1, z2 = _batch(0, 0.0)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    obj = ClusterNSFocal(n_clusters=K)
    obj(z1.detach(), z2.detach())  # starts clustering
    obj(z1, z2).loss.backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0
    assert not obj.centroids.requires_grad


@pytest.mark.parametrize(
    "name,opts",
    [
        ("simcse", {"temperature": -0.05}),
        ("simcse", {"temperature": 0}),
        ("focal", {"margin": -0.1}),
        ("clusterns", {"n_clusters": 1}),
        ("clusterns", {"kmeans_lr": 0}),
        ("clusterns", {"kmeans_start_cosine": 2.0}),
        ("clusterns", {"bml_weight": -1e-4}),
        ("clusterns", {"update_rule": "median"}),
        ("clusterns", {"bml_reduction": "sum"}),
        ("clusterns", {"init": "random"}),
        ("clusterns", {"loss": "triplet"}),
        ("clusterns", {"alpha": float("nan")}),
        ("clusterns-focal", {"loss": "infonce"}),
        ("simcse", {"n_clusters": 8}),
        ("sbert", {}),
    ],
)
def test_bad_hyper_parameters_raise_one_line_config_errors(name, opts):
    with pytest.raises(ConfigError) as err:
        build_objective(name, **opts)
    assert "\n" not in str(err.value)


def test_n_clusters_above_global_batch_is_a_config_error_on_the_first_step():
    obj = ClusterNS(n_clusters=B + 1, kmeans_start_cosine=0.4)
    with pytest.raises(ConfigError, match="n_clusters=17 exceeds the global batch size 16"):
        obj(*_batch(0, 3.0))


def test_build_objective_names():
    assert isinstance(build_objective("simcse"), SimCSE)
    assert isinstance(build_objective("focal", margin=0.2), FocalInfoNCE)
    c = build_objective("clusterns", n_clusters=8)
    assert type(c) is ClusterNS and c.loss == "infonce"
    f = build_objective("clusterns-focal", margin=0.25)
    assert isinstance(f, ClusterNSFocal) and f.loss == "focal" and math.isclose(f.margin, 0.25)
    assert c.n_clusters == 8 and ClusterNS().n_clusters == 128


def test_read_scalars_one_sync_keeps_order() -> None:
    from csekit.objectives.base import read_scalars

    vals = {"a": torch.tensor(1.5), "b": 2, "skip": torch.ones(3), "c": torch.tensor([4.0])}
    assert read_scalars(vals) == {"a": 1.5, "b": 2.0, "c": 4.0}
    got = read_scalars(vals, first=torch.tensor(float("nan")))
    assert list(got) == ["", "a", "b", "c"] and math.isnan(got[""])
    assert read_scalars({}) == {}

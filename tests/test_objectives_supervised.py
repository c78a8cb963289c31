"""Supervised objectives (z3 = the NLI hard-negative view) against brute-force loops.

Oracles: :func:`test_losses_supervised.loop_loss` (supervised SimCSE's cl_forward row by row,
float64, autograd through the loop) on the global batch; for ClusterNS the lifecycle of
``test_objectives.LoopClusterNS`` (start test on the z1-z2 matrix, greedy-chain init, momentum
update, second-nearest centroid, false-negative mask, BML) with the NLI block and the cluster
block both in the denominator (B x 3B).
"""

from __future__ import annotations

import pytest
import torch
from test_clustering import loop_greedy_chain, loop_momentum, loop_nearest
from test_losses import loop_bml
from test_losses_supervised import loop_loss
from test_objectives import SCHEDULE, _mean_cos

from csekit.objectives import build_objective, clusterns_loss

B, D, K = 12, 6, 4


def _triplet(step: int, shared: float, b: int = B):
    g = torch.Generator().manual_seed(77 + step)
    u = torch.randn(1, D, generator=g, dtype=torch.float64)
    z1 = shared * u + torch.randn(b, D, generator=g, dtype=torch.float64)
    z2 = z1 + 0.3 * torch.randn(b, D, generator=g, dtype=torch.float64)
    z3 = z1 + 0.9 * torch.randn(b, D, generator=g, dtype=torch.float64)
    return [x.requires_grad_(True) for x in (z1, z2, z3)]


@pytest.mark.parametrize("name", ["simcse", "focal"])
@pytest.mark.parametrize("w", [0.0, 0.8])
def test_simcse_and_focal_supervised_equal_the_loop_with_gradients(name, w):
    obj = build_objective(name, hard_negative_weight=w)
    z1, z2, z3 = _triplet(0, 1.0)
    out = obj(z1, z2, z3)
    want = loop_loss(z1, z2, z3, w=w, focal=name == "focal")
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-12)
    for a, b in zip(torch.autograd.grad(out.loss, (z1, z2, z3)),
                    torch.autograd.grad(want, (z1, z2, z3)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    stats = out.stat_floats()
    cos = torch.nn.functional.cosine_similarity
    assert stats["triplet_neg_cos"] == pytest.approx(cos(z1, z3).mean().item(), rel=1e-6)
    assert stats["triplet_margin"] == pytest.approx(
        (cos(z1, z2) - cos(z1, z3)).mean().item(), rel=1e-5)


@pytest.mark.parametrize("name", ["simcse", "focal", "clusterns", "clusterns-focal"])
def test_without_z3_nothing_changes(name):
    """The weight is inert without z3: obj(z1, z2) is the unsupervised loss (the centroid block
    of ClusterNS gets no weight)."""
    kw = {"n_clusters": K, "kmeans_start_cosine": 1.0} if name.startswith("clusterns") else {}
    a, b = build_objective(name, hard_negative_weight=2.0, **kw), build_objective(name, **kw)
    for step in range(3):  # clusterns: starts at step 0, clustered steps after
        z1, z2, _ = (x.detach() for x in _triplet(step, 0.5))
        assert a(z1, z2).loss.item() == b(z1, z2).loss.item()


class LoopSupervisedClusterNS:
    def __init__(self, *, focal, w, bml_weight, alpha, beta, seed, start=0.4, lr=1e-3):
        self.focal, self.w, self.bw, self.alpha, self.beta = focal, w, bml_weight, alpha, beta
        self.seed, self.start, self.lr, self.c = seed, start, lr, None

    def step(self, z1, z2, z3):
        d1, d2 = z1.detach(), z2.detach()
        if self.c is None:
            loss = loop_loss(z1, z2, z3, w=self.w, focal=self.focal)
            if _mean_cos(d1, d2) <= self.start:
                first = int(torch.randint(z1.shape[0], (1,),
                                          generator=torch.Generator().manual_seed(self.seed)))
                self.c = d1[loop_greedy_chain(d1, d2, K, first)]
            return loss
        self.c = loop_momentum(self.c, d1, self.lr, "sum")
        near = loop_nearest(d1, self.c)
        h = self.c[[n[1] for n in near]]
        loss = loop_loss(z1, z2, z3, w=self.w, focal=self.focal, extra=h)
        mask = torch.tensor([[i != j and near[i][0] == near[j][0] for j in range(len(near))]
                             for i in range(len(near))])
        return loss + self.bw * loop_bml(d1, d2, mask, self.alpha, self.beta)


@pytest.mark.parametrize(("focal", "w"), [(False, 0.0), (False, 0.5), (True, 0.5)])
def test_supervised_clusterns_lifecycle_equals_the_loop(focal, w):
    kw = {"bml_weight": 0.0, "alpha": 0.2, "beta": 0.5}  # BML has its own oracle; see below
    obj = build_objective("clusterns-focal" if focal else "clusterns", n_clusters=K, seed=5,
                          hard_negative_weight=w, **kw)
    ref = LoopSupervisedClusterNS(focal=focal, w=w, seed=5, **kw)
    started = []
    for step, shared in enumerate(SCHEDULE):
        z1, z2, z3 = _triplet(step, shared)
        out = obj(z1, z2, z3)
        want = ref.step(z1, z2, z3)
        # centroids are kept in float32 (ClusterState), hence 1e-6 rather than 1e-12
        assert out.loss.item() == pytest.approx(want.item(), rel=1e-6, abs=1e-6), step
        for a, b in zip(torch.autograd.grad(out.loss, (z1, z2, z3)),
                        torch.autograd.grad(want, (z1, z2, z3)), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        started.append(out.stat_floats()["started"])
        if ref.c is not None:
            torch.testing.assert_close(obj.centroids.double(), ref.c, rtol=1e-6, atol=1e-6)
    assert started == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]


def test_supervised_clusterns_with_bml_equals_the_loop():
    kw = {"bml_weight": 0.05, "alpha": 0.2, "beta": 0.5}
    obj = build_objective("clusterns", n_clusters=K, seed=5, hard_negative_weight=0.3, **kw)
    ref = LoopSupervisedClusterNS(focal=False, w=0.3, seed=5, **kw)
    for step, shared in enumerate(SCHEDULE):
        z1, z2, z3 = _triplet(step, shared)
        assert obj(z1, z2, z3).loss.item() == pytest.approx(ref.step(z1, z2, z3).item(),
                                                            rel=1e-6, abs=1e-6), step


def test_clusterns_loss_function_with_z3_is_the_3b_block():
    z1, z2, z3 = (x.detach() for x in _triplet(2, 0.0))
    c = torch.randn(K, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    near = loop_nearest(z1, c)
    h = c[[n[1] for n in near]]
    got = clusterns_loss(z1, z2, c, bml_weight=0.0, z3=z3, hard_negative_weight=0.4)
    assert got.item() == pytest.approx(loop_loss(z1, z2, z3, w=0.4, extra=h).item(), rel=1e-12)

"""Two CPU processes (gloo) on shards == one process on the global batch, for ClusterNS-focal,
unsupervised (z1, z2) and supervised (z1, z2, z3 with a hard-negative weight: the NLI block and
the cluster block both in the denominator, z3 gathered with gradient like z1 and z2).

Each process holds the same linear "encoder", embeds its shard, the objective gathers the global
batch itself; the loss is multiplied by world_size before backward and parameter gradients are
averaged as DDP does. Losses, input gradients, parameters and centroids must match the single
process run to 1e-5, and centroids must be bit-identical across processes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from csekit import distributed
from csekit.objectives import build_objective

sys.path.insert(0, str(Path(__file__).parent))
from _gloo import close_gloo, init_gloo, rendezvous_file

WORLD = 2
GLOBAL_B, D_IN, D, K, STEPS = 12, 10, 8, 8, 6  # K > local batch: init must use the global batch
SHARED = [3.0, 3.0, 0.0, 1.0, 0.0, 2.0]  # mean cosine high, high, low -> start at step 2
OPTS = {
    "n_clusters": K,
    "kmeans_start_cosine": 0.4,
    "bml_weight": 0.05,
    "alpha": 0.2,
    "beta": 0.5,
    "kmeans_lr": 0.05,
    "seed": 3,
}



def _global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    u = torch.randn(1, D_IN, generator=g)
    x = SHARED[step] * u + torch.randn(GLOBAL_B, D_IN, generator=g)
    noise = 0.2 * torch.randn(GLOBAL_B, D_IN, generator=g)
    hard = x + 0.8 * torch.randn(GLOBAL_B, D_IN, generator=g)  # the supervised third view
    return x, x + noise, hard


def _run(rank: int, world: int, supervised: bool) -> dict[str, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = torch.nn.Linear(D_IN, D)
    extra = {"hard_negative_weight": 0.5} if supervised else {}
    obj = build_objective("clusterns-focal", **OPTS, **extra)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    rec: dict[str, list[torch.Tensor]] = {
        "loss": [],
        "g1": [],
        "g2": [],
        "g3": [],
        "centroids": [],
        "started": [],
    }
    b = GLOBAL_B // world
    for step in range(STEPS):
        x1, x2, x3 = _global_batch(step)
        z1 = model(x1[rank * b : (rank + 1) * b])
        z2 = model(x2[rank * b : (rank + 1) * b])
        z3 = model(x3[rank * b : (rank + 1) * b])
        for z in (z1, z2, z3):
            z.retain_grad()
        out = obj(z1, z2, z3) if supervised else obj(z1, z2)
        opt.zero_grad()
        (out.loss * world).backward()
        for p in model.parameters():  # what DDP does: average gradients over processes
            distributed.all_reduce_sum_(p.grad)
            p.grad /= world
        opt.step()
        rec["loss"].append(out.loss.detach().clone())
        rec["g1"].append(z1.grad.detach() / world)  # this shard's part of d(loss)/d(z1)
        rec["g2"].append(z2.grad.detach() / world)
        rec["g3"].append(z3.grad.detach() / world if supervised else torch.zeros(0))
        rec["centroids"].append(obj.centroids.detach().clone())
        rec["started"].append(torch.tensor(obj.started))
    rec["params"] = [p.detach().clone() for p in model.parameters()]
    return rec


def _worker(rank: int, world: int, rendezvous: str, out_dir: str) -> None:
    """Both modes in one process group (one spawn: starting processes is the slow part)."""
    torch.set_num_threads(1)
    init_gloo(rank, world, rendezvous)
    try:
        assert distributed.world_size() == world
        for supervised in (False, True):
            torch.save(_run(rank, world, supervised),
                       Path(out_dir) / f"rank{rank}-{int(supervised)}.pt")
    finally:
        close_gloo()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(WORLD, rendezvous_file(out), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.fixture(scope="module", params=[False, True], ids=["pairs", "triplets"])
def runs(request, spawned):
    ranks = [torch.load(spawned / f"rank{r}-{int(request.param)}.pt", weights_only=True)
             for r in range(WORLD)]
    assert not distributed.is_distributed()
    single = _run(0, 1, request.param)
    if request.param:  # the third view really is in the loss
        assert all(g.abs().sum() > 0 for g in single["g3"])
    return single, ranks


def test_clustering_started_mid_run(runs):
    single, ranks = runs
    want = [False, False, True, True, True, True]
    assert [bool(s) for s in single["started"]] == want
    for r in ranks:
        assert [bool(s) for s in r["started"]] == want


def test_losses_equal_single_process(runs):
    single, ranks = runs
    for r in ranks:
        assert torch.allclose(
            torch.stack(r["loss"]), torch.stack(single["loss"]), atol=1e-5, rtol=0
        )


def test_input_gradients_equal_single_process(runs):
    single, ranks = runs
    for step in range(STEPS):
        for key in ("g1", "g2", "g3"):
            got = torch.cat([r[key][step] for r in ranks])
            assert torch.allclose(got, single[key][step], atol=1e-5, rtol=0), (key, step)


def test_centroids_identical_across_ranks_and_equal_single_process(runs):
    single, ranks = runs
    for step in range(2, STEPS):
        assert torch.equal(ranks[0]["centroids"][step], ranks[1]["centroids"][step])
        assert torch.allclose(
            ranks[0]["centroids"][step], single["centroids"][step], atol=1e-5, rtol=0
        )


def test_parameters_equal_single_process(runs):
    single, ranks = runs
    for r in ranks:
        for p, q in zip(r["params"], single["params"], strict=True):
            assert torch.allclose(p, q, atol=1e-5, rtol=0)
    # the run did move the parameters (otherwise the comparison would be empty)
    torch.manual_seed(0)
    assert not torch.allclose(torch.nn.Linear(D_IN, D).weight, single["params"][0], atol=1e-3)

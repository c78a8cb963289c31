"""csekit.st losses under DDP (two gloo CPU processes) == one process on the global batch.

Each process wraps the same tiny SentenceTransformer in DistributedDataParallel (what the
transformers trainer does), puts it into the loss as the trainer does
(``override_model_in_loss``: ``loss.model = wrapped``), embeds its half of the batch and calls
``backward`` on the returned loss with no scaling of its own. After DDP's gradient averaging
the model's gradients, the head's gradients (averaged by the loss's hook; the heads start
from different seeds and are broadcast from rank 0) and the loss values must equal those of a
single process on the whole batch, over a SimCSE step and a clustering step of ClusterNS.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _gloo import close_gloo, init_gloo, rendezvous_file

pytest.importorskip("sentence_transformers")

WORLD, B, STEPS = 2, 8, 2
OPTS = {"n_clusters": 4, "kmeans_start_cosine": 1.0, "kmeans_lr": 0.2, "bml_weight": 0.5,
        "alpha": 0.1, "beta": 0.3, "seed": 1}
WORDS = ["the", "city", "river", "album", "song", "was", "released", "in", "a", "new", "team",
         "film", "school", "north", "south", "church", "village", "game", "one", "two"]



def _batch(step: int) -> list[str]:
    rng = random.Random(step)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(B)]


def _run(rank: int, world: int, folder: str, cached: bool = False) -> dict[str, list[torch.Tensor]]:
    from sentence_transformers import SentenceTransformer

    from csekit.st import CachedClusterNSLoss, ClusterNSLoss

    model = SentenceTransformer(folder, device="cpu")
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    torch.manual_seed(100 + rank)  # different head init per rank: the broadcast must fix it
    # cached: mini-batches of 3 of the 4 local rows (pass 3 re-forwards under DDP's no_sync)
    loss = CachedClusterNSLoss(model, mini_batch_size=3, mlp=True, **OPTS) if cached \
        else ClusterNSLoss(model, mlp=True, **OPTS)
    if world > 1:
        loss.model = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    rec: dict[str, list[torch.Tensor]] = {"loss": [], "model_grads": [], "head_grads": [],
                                          "head": [], "centroids": []}
    b = B // world
    prep = getattr(model, "preprocess", None) or model.tokenize
    for step in range(STEPS):
        local = _batch(step)[rank * b:(rank + 1) * b]
        for p in loss.parameters():
            p.grad = None
        out = loss([dict(prep(local)), dict(prep(local))], None)
        out.backward()
        rec["loss"].append(out.detach().clone())
        rec["model_grads"].append(torch.cat([p.grad.flatten() for p in model.parameters()
                                             if p.grad is not None]))
        rec["head_grads"].append(torch.cat([p.grad.flatten() for p in loss.head.parameters()]))
        rec["head"].append(torch.cat([p.detach().flatten() for p in loss.head.parameters()]))
        rec["centroids"].append(loss.objective.centroids.detach().clone())
    return rec


def _worker(rank: int, world: int, rendezvous: str, folder: str, out_dir: str,
            cached: bool = False) -> None:
    torch.set_num_threads(1)
    init_gloo(rank, world, rendezvous)
    try:
        torch.save(_run(rank, world, folder, cached), Path(out_dir) / f"rank{rank}.pt")
    finally:
        close_gloo()


@pytest.mark.slow  # two spawned processes importing sentence-transformers: minutes when loaded
@pytest.mark.parametrize("cached", [False, True])  # True: the 2 processes use gradient caching
def test_ddp_equals_single_process(tiny_bert_dir: Path, tmp_path: Path, cached: bool) -> None:
    from csekit.modeling.encoder import Encoder

    folder = tmp_path / "model"
    Encoder.from_pretrained(str(tiny_bert_dir), pooler="cls_before_pooler", mlp="none").save(folder)
    mp.spawn(_worker, args=(WORLD, rendezvous_file(tmp_path), str(folder), str(tmp_path),
                            cached), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    # the single-process reference (uncached) uses rank 0's head init (the one broadcast)
    single = _run(0, 1, str(folder))
    for step in range(STEPS):
        for r in ranks:
            torch.testing.assert_close(r["head"][step], single["head"][step], atol=0, rtol=0)
            torch.testing.assert_close(r["loss"][step], single["loss"][step], atol=1e-6, rtol=0)
            torch.testing.assert_close(r["model_grads"][step], single["model_grads"][step],
                                       atol=1e-6, rtol=1e-4)
            torch.testing.assert_close(r["head_grads"][step], single["head_grads"][step],
                                       atol=1e-6, rtol=1e-4)
            torch.testing.assert_close(r["centroids"][step], single["centroids"][step],
                                       atol=1e-6, rtol=0)
        assert torch.equal(ranks[0]["centroids"][step], ranks[1]["centroids"][step])
    assert ranks[0]["centroids"][1].shape == (4, 32)  # step 2 ran with clusters

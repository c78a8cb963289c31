"""Run under torchrun by tests/test_distributed_agreement.py (not a test module itself).

Builds a Trainer as ``csekit train`` would, then embeds the same sentences in train mode on
every process and writes, from rank 0, every rank's embeddings to ``OUT/probe.pt``: with
dropout on, the masks (hence the embeddings) must differ across processes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from csekit import distributed as D
from csekit.training import TrainConfig, Trainer


def main() -> None:
    model, corpus, out, dropout = sys.argv[1], sys.argv[2], Path(sys.argv[3]), float(sys.argv[4])
    cfg = TrainConfig.from_dict({"model": model, "train_file": corpus, "output_dir": str(out),
                                     "batch_size": 8, "max_steps": 1, "dropout": dropout, "pooler": "avg",
                                     "mlp": "none", "progress": False, "seed": 11})
    t = Trainer(cfg)
    enc = t.accelerator.unwrap_model(t.model)
    enc.train()
    inputs = enc.tokenize(["the city was known for its river", "a new album was released"])
    with torch.no_grad():
        z = enc(**inputs)
    got = D.all_gather_object(z)
    if D.rank() == 0:
        torch.save(got, out / "probe.pt")


if __name__ == "__main__":
    main()

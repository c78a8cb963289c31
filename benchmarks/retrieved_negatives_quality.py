"""Quality row: SimCSE, SimCSE + retrieved hard negatives, ClusterNS - same data, steps, seeds.

For each starting model (bert-mini, all-MiniLM-L6-v2), a seeded sample of ``steps x batch``
Wikipedia sentences is the training data of every arm:

- ``simcse``: unsupervised SimCSE on the sample (two dropout views);
- ``simcse+retrieved``: ``csekit mine`` with the *starting* model over the sample (candidates:
  the sample plus ``--pool`` more Wikipedia sentences), one negative per sentence, then SimCSE
  on the ``sent0,sent1,hard_neg`` rows (sent1 = sent0: still two dropout views, plus the
  retrieved negative; Wang et al. 2022's retrieved negatives);
- ``clusterns``: ClusterNS on the sample.

Training, selection (STS-B dev) and the STS test are benchmarks/quality.py's (same settings,
same cache of finished runs under ``--work-dir``). Results: ``results/retrieved_negatives.*``.

Usage (a quiet machine)::

    python benchmarks/retrieved_negatives_quality.py --models bert-mini,minilm --seeds 1,2,3
    python benchmarks/retrieved_negatives_quality.py --models bert-mini --steps 4 \\
        --eval-steps 2 --batch-size 8 --seeds 1 --pool 100 --work-dir /tmp/rq   # smoke check
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import shared_root, write_results
from benchmarks.quality import (
    add_run_args,
    eval_pooler,
    markdown,
    model_paths,
    run_config,
    summarise,
    train_one,
    untrained,
)

ARMS = ("simcse", "simcse+retrieved", "clusterns")


def sample(n: int, pool: int, seed: int, work: Path) -> tuple[Path, Path]:
    """``n`` training sentences and ``pool`` more candidate sentences (disjoint, seeded)."""
    src = shared_root() / "data" / "corpus" / "wiki_en_sentences.txt"
    lines = list(dict.fromkeys(s.strip() for s in src.read_text(encoding="utf-8").splitlines()
                               if s.strip()))
    picked = random.Random(seed).sample(lines, n + pool)
    work.mkdir(parents=True, exist_ok=True)
    train, extra = work / f"train-{n}.txt", work / f"pool-{pool}.txt"
    train.write_text("\n".join(picked[:n]) + "\n", encoding="utf-8")
    extra.write_text("\n".join(picked[n:] or picked[:1]) + "\n", encoding="utf-8")
    return train, extra


def mined(model: Path, train: Path, extra: Path, args: argparse.Namespace, out: Path,
          pooler: str) -> Path:
    """Negatives mined with the starting model, embedded as it is evaluated (``pooler``: with
    a train-only head that is [CLS] before the pooler, which an MLM-only BERT lacks)."""
    from csekit.cli.main import main as csekit

    if out.exists():
        return out
    rc = csekit(["mine", str(model), "--input", str(train), "--corpus", str(extra),
                 "--output", str(out), "--pooler", pooler, "--num-negatives", "1",
                 "--range-min", str(args.range_min), "--k", str(args.k),
                 "--relative-margin", str(args.relative_margin), "--sampling", "random",
                 "--seed", "0", "--max-seq-len", "32"])
    if rc:
        raise SystemExit(f"csekit mine failed ({rc})")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="bert-mini,minilm")
    ap.add_argument("--arms", default=",".join(ARMS))
    add_run_args(ap)
    ap.add_argument("--pool", type=int, default=50_000, help="extra candidate sentences")
    ap.add_argument("--range-min", type=int, default=3)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--relative-margin", type=float, default=0.05)
    ap.add_argument("--mine-pooler", default=None,
                    help="the pooler csekit mine embeds with (default: the evaluation pooler); "
                         "an MLM-only model's [CLS] puts nearly every pair above 0.95")
    ap.add_argument("--work-dir", default="runs/retrieved_negatives")
    ap.add_argument("--name", default="retrieved_negatives")
    args = ap.parse_args()
    args.cached_only = False
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    work = Path(args.work_dir)
    train, extra = sample(args.steps * args.batch_size, args.pool, 0, work / "data")
    paths = model_paths()
    data_dir = shared_root() / "data" / "senteval"
    study: dict[str, Any] = {"settings": vars(args), "models": {}}
    for name in args.models.split(","):
        model = paths[name]
        block: dict[str, Any] = {"path": str(model), "runs": [],
                                 "pooler": eval_pooler(args.pooler, args.mlp)}
        block["untrained"] = untrained(model, block["pooler"], data_dir)
        for arm in args.arms.split(","):
            data = (mined(model, train, extra, args, work / "data" / f"mined-{name}.parquet",
                          args.mine_pooler or block["pooler"])
                    if arm == "simcse+retrieved" else train)
            for seed in [int(s) for s in args.seeds.split(",")]:
                out = work / name / f"{arm}-seed{seed}"
                cfg = run_config(args, model, "simcse" if arm.startswith("simcse") else arm,
                                 seed, out)
                cfg["train_file"] = str(data)
                rec = train_one(cfg)
                rec["objective"] = arm
                print(f"[{name}] {arm} seed {seed}: avg {rec['avg']:.2f} best dev "
                      f"{rec['best_dev']:.2f} @ {rec['best_step']}", flush=True)
                block["runs"].append(rec)
        by_arm: dict[str, list[dict[str, Any]]] = {}
        for r in block["runs"]:
            by_arm.setdefault(r["objective"], []).append(r)
        block["summary"] = {a: summarise(runs) for a, runs in by_arm.items()}
        study["models"][name] = block
    md = markdown(study)
    print(md)
    write_results(args.name, study, "# SimCSE vs SimCSE + retrieved negatives vs ClusterNS\n\n"
                  "Same sampled sentences, steps and seeds per arm; negatives mined with the "
                  "starting model (`csekit mine`).\n\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

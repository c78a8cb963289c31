"""``csekit train``: contrastive training (unsupervised, or supervised on NLI pairs / triplets)
from a YAML recipe and/or flags.

Every :class:`~csekit.training.TrainConfig` option has a flag (``--learning-rate``,
``--n-clusters``, ``--hard-negatives/--no-hard-negatives``, ...); flags override ``--config``.
Multi-GPU / multi-node: launch the same command with ``accelerate launch`` or ``torchrun``
(see docs/distributed.md); ``--batch-size`` is always the GLOBAL batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import typing
from typing import Any

from csekit.modeling.representation.prompt import POSITION_MODES
from csekit.training.config import (
    BML_REDUCTIONS,
    CENTROID_UPDATES,
    CLUSTER_INITS,
    MLP_MODES,
    OBJECTIVE_DEPENDENT,
    OBJECTIVES,
    ON_BAD_LINE,
    POOLERS,
    PRECISIONS,
    SUPERVISION_MODES,
    TrainConfig,
)

logger = logging.getLogger(__name__)

HELP: dict[str, str] = {
    "model": "backbone: a Hugging Face hub id, a local HF folder or a csekit/ST folder",
    "train_file": "training data: text (.txt/.gz, one sentence a line), JSONL, CSV/TSV, "
                  "Parquet or a datasets save_to_disk folder; a glob or comma-separated list. "
                  "A table with sent0,sent1[,hard_neg] columns trains supervised (--supervision)",
    "text_column": "the text column of an unsupervised JSONL/CSV/Parquet/datasets corpus "
                   "(default: the only string column, or the one named text or sentence)",
    "output_dir": "best model at its root, checkpoints/ , metrics.jsonl, results.json",
    "data_dir": "SentEval folder (contains downstream/) for STS-B dev and the final STS test; "
                "without it (or with --eval-steps 0) there is no dev evaluation and the best "
                "model is the last one",
    "objective": "training objective",
    "pooler": "training pooler (with --mlp train, evaluation uses cls_before_pooler)",
    "mlp": "MLP head: train (SimCSE mlp_only_train), always, none",
    "dropout": "set every dropout of the backbone to this rate (default: its own, 0.1 for "
               "BERT; ModernBERT, ALBERT and decoder LLMs ship 0: unsupervised training then "
               "stops at start and asks for it)",
    "instruction": "text put before every sentence in training and evaluation (decoder "
                   "embedding models, e.g. 'Instruct: ...\\nQuery: '); saved as the "
                   "sentence-transformers default prompt",
    "bidirectional": "bidirectional attention in a decoder LLM (LLM2Vec); only where "
                     "transformers has the switch (Gemma family), see docs/backbones.md",
    "gradient_checkpointing": "recompute activations in the backward pass (less memory, ~1/3 "
                              "more compute; turns the lean BERT/RoBERTa forward off)",
    "lora_r": "train LoRA adapters of this rank (peft: pip install 'csekit[lora]') instead of "
              "every weight; the saved model is merged",
    "lora_alpha": "LoRA scaling alpha (the update is B A x alpha / r); default 2 x r, as "
                  "LLM2Vec",
    "lora_dropout": "dropout on the LoRA branch's input",
    "lora_target_modules": "comma-separated module names to adapt (default: the "
                           "architecture's, docs/backbones.md)",
    "lora_save_adapter": "also save the LoRA adapter (OUTPUT_DIR/lora_adapter, peft format) "
                         "beside the merged model",
    "prompt_template": "prompt pooler T1 (view 1 and evaluation), with [X] and [MASK]; default: "
                       "PromptBERT's for the model family",
    "prompt_template2": "prompt pooler T2 (the other views); default: PromptBERT's",
    "prompt_denoise": "prompt: subtract the template-only state in training (default: on for "
                      "prompt as PromptBERT, off for prompteol as PromptEOL)",
    "prompt_denoise_grad": "prompt: gradient through the template states (PromptBERT: on)",
    "prompt_positions": "prompt: template-state position ids, model numbering or PromptBERT's "
                        "0-based reference ids (differ for RoBERTa only)",
    "prompt_eval_denoise": "prompt: denoise at evaluation too (PromptBERT unsup: off)",
    "prompt_eval_period": "prompt: evaluation appends '.' unless the sentence ends in .?\"'",
    "trust_remote_code": "allow custom model code from the hub (off by default)",
    "max_seq_len": "truncation in training, tokens (published: 32)",
    "temperature": "softmax temperature T (published: 0.05)",
    "margin": "Focal-InfoNCE hardness m (published: 0.3)",
    "n_clusters": "ClusterNS number of centroids k (published: 128; <= global batch)",
    "kmeans_lr": "ClusterNS centroid momentum (published: 1e-3)",
    "kmeans_start_cosine": "ClusterNS starts when the batch mean cosine <= this (published 0.4)",
    "bml_weight": "ClusterNS bidirectional margin loss weight (BERT-base: 1e-3)",
    "bml_alpha": "BML alpha (BERT-base: 0)",
    "bml_beta": "BML beta (BERT-base: 0.3)",
    "hard_negatives": "ClusterNS centroid hard negatives (on by default)",
    "centroid_update": "centroid update: sum of members (published) or mean",
    "bml_reduction": "BML averaged over all B x B entries (published) or over the pairs",
    "cluster_init": "centroid initialisation: greedy chain (published) or kmeans++",
    "dedup": "drop duplicate sentences",
    "on_bad_line": "bad rows (invalid UTF-8, NUL, missing/empty/non-string text): error "
                   "(naming file and row) or skip and count",
    # supervised NLI pairs / triplets (issue #14)
    "supervision": "auto: from --train-file (one sentence a line, or a table without "
                   "sent0,sent1: unsupervised; a table with them or --text-columns: pairs or "
                   "triplets by its columns); or insist on one",
    "text_columns": "table columns anchor,positive[,hard_negative] (default sent0,sent1"
                    "[,hard_neg], as SimCSE's nli_for_simcse.csv)",
    "hard_negative_weight": "SimCSE's log-space weight added to each row's own hard negative "
                            "(triplets only)",
    "switch_case": "switch-case positives (CARDS, Wang et al. 2022): flip the case of each "
                   "word's first letter with this probability in the positive view "
                   "(unsupervised, cased tokenizers only; 0: off)",
    "batch_size": "GLOBAL batch (all processes together); the in-batch negatives "
                  "(SimCSE / Focal 64, ClusterNS 256)",
    "learning_rate": "AdamW peak learning rate (SimCSE / Focal 3e-5, ClusterNS 5e-5)",
    "weight_decay": "AdamW weight decay (not on biases and LayerNorm)",
    "warmup_steps": "linear warm-up steps (then linear decay to 0)",
    "warmup_ratio": "warm-up as a fraction of all steps",
    "max_grad_norm": "gradient clipping norm (0: off; default 1.0 as SimCSE's HF Trainer)",
    "grad_accum_steps": "accumulate gradients of N batches per update (does NOT add negatives)",
    "mini_batch_size": "gradient caching: embed the batch in mini-batches of M examples and "
                       "back-propagate through each (same gradient as the whole batch, activation "
                       "memory of M examples, one extra forward; docs/gradient_caching.md)",
    "precision": "fp32, bf16 (CPU or GPU) or fp16 (GPU)",
    "epochs": "passes over the corpus (published: 1)",
    "max_steps": "optimiser steps (overrides --epochs)",
    "seed": "random seed (published: 42)",
    "skip_nonfinite": "skip updates whose loss is NaN/inf instead of stopping",
    "length_subbatches": "run each training forward as up to N length-sorted sub-batches, "
                         "each padded to its own longest sentence (same maths); 1: one padded "
                         "batch; 1 on GPUs until benchmarks/gpu_check.sh has measured it there",
    "compile": "torch.compile the backbone for training",
    "lean_forward": "BERT/RoBERTa training forward with stacked Q/K/V and, for [CLS] pooling, "
                    "only position 0 in the last layer (same maths; --no-lean-forward: "
                    "transformers' forward); off on GPUs until benchmarks/gpu_check.sh has "
                    "measured it there",
    "eval_steps": "evaluate STS-B dev every N steps (published: 125); 0: no dev evaluation "
                  "(for a corpus without STS data: the best model is then the last one)",
    "eval_batch_size": "batch size of evaluation encoding",
    "patience": "early stopping after N evaluations without improvement (ClusterNS: 3)",
    "eval_at_start": "also evaluate the untrained model at step 0 (it competes for the best model)",
    "final_test": "7-task STS test of the best model at the end",
    "logging_steps": "write metrics every N steps",
    "tensorboard": "also write TensorBoard logs to OUTPUT_DIR/tensorboard",
    "save_steps": "full checkpoint every N steps, independent of --eval-steps (also at the "
                  "end and on SIGTERM/SIGINT; an improving evaluation saves the best model only)",
    "save_total_limit": "keep the last K checkpoints",
    "resume": "continue from the last checkpoint in --output-dir",
    "progress": "progress bar (off when CI is set or off rank 0)",
    "tf32": "TF32 matrix products in fp32 runs on Ampere or newer GPUs (--no-tf32: exact fp32)",
    "prefetch": "tokenise the next batch in a background thread (pinned, non-blocking copies "
                "on CUDA)",
}
CHOICES: dict[str, tuple[str, ...]] = {
    "objective": OBJECTIVES, "pooler": POOLERS, "mlp": MLP_MODES, "precision": PRECISIONS,
    "centroid_update": CENTROID_UPDATES, "on_bad_line": ON_BAD_LINE,
    "bml_reduction": BML_REDUCTIONS, "cluster_init": CLUSTER_INITS,
    "supervision": SUPERVISION_MODES,
    "prompt_positions": POSITION_MODES,
}
SKIP = {"extra"}
# Defaults that depend on the device (None in TrainConfig), as --help shows them.
AUTO_SHOWN = {"lean_forward": "on for CPU, off for GPU",
              "length_subbatches": "4 on CPU, 1 on GPU"}


def _type_of(name: str) -> type:
    """The scalar type of a TrainConfig field (``int | None`` -> int), from its annotation."""
    tp = typing.get_type_hints(TrainConfig)[name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train", help="train a sentence encoder (SimCSE, Focal-InfoNCE, ClusterNS, combined)",
        description="Contrastive training (unsupervised, or supervised on NLI pairs / triplets "
                    "chosen from --train-file's columns) from a YAML recipe and/or flags; flags "
                    "override --config. --batch-size is the GLOBAL batch: launch the same "
                    "command with torchrun or accelerate launch for several GPUs or nodes "
                    "(docs/distributed.md). Best model at the root of --output-dir, "
                    "checkpoints in --output-dir/checkpoints, --resume continues exactly.")
    p.add_argument("--config", metavar="FILE.yaml", help="a recipe (YAML); flags override it")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name in SKIP:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = HELP.get(f.name, f.name)
        shown = "the objective's published value" if f.name in OBJECTIVE_DEPENDENT \
            else AUTO_SHOWN.get(f.name, getattr(defaults, f.name))
        kind = _type_of(f.name)
        if kind is bool:
            if f.name == "resume":
                p.add_argument(flag, action="store_true", default=None, help=help_text)
            else:
                p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                               help=f"{help_text} (default {shown})")
            continue
        p.add_argument(flag, dest=f.name, type=kind, default=None,
                       choices=CHOICES.get(f.name), metavar=None if f.name in CHOICES else
                       f.name.upper(), help=f"{help_text} (default {shown})")
    # (issue 16) upload the best model when the run completes; not a TrainConfig option
    p.add_argument("--push-to-hub", metavar="REPO", default=None,
                   help="when training completes, upload the output folder's model to this "
                        "Hub repo (as `csekit push`; checked before training starts)")
    from csekit.cli.push_cmd import add_hub_options

    add_hub_options(p)
    p.set_defaults(func=run_train)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    base = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainConfig)
                 if f.name not in SKIP}
    return base.override(**overrides)


def run_train(args: argparse.Namespace) -> int:
    from csekit.training import Trainer

    if int(os.environ.get("RANK", "0")) != 0:  # torchrun / accelerate: only rank 0 talks
        logging.getLogger("csekit").setLevel(logging.WARNING)
    cfg = config_from_args(args)
    repo = getattr(args, "push_to_hub", None)
    if repo:
        from csekit.modeling.saved.hub import check_push_target

        check_push_target(repo)  # fail now, not after hours of training
    result = Trainer(cfg).train()
    if result.stopped == "interrupted":
        print(f"csekit: interrupted at step {result.steps}; checkpoint written, continue with "
              f"--resume --output-dir {cfg.output_dir}", flush=True)
    elif int(os.environ.get("RANK", "0")) == 0:
        best = "n/a" if result.best_score is None else f"{result.best_score:.2f}"
        print(f"csekit: {result.stopped} after {result.steps} steps; best STS-B dev {best} "
              f"(step {result.best_step}); model saved to {cfg.output_dir}", flush=True)
        if repo and result.exit_code == 0:
            from csekit.cli.push_cmd import push

            push(cfg.output_dir, repo, args)
    return result.exit_code


def main(argv: list[str] | None = None) -> int:
    """``python -m csekit.cli.train_cmd ...`` == ``csekit train ...`` (used by launchers/tests)."""
    import sys

    from csekit.cli.main import main as csekit_main

    return csekit_main(["train", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())

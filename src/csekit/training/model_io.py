"""Evaluation during training, the best model at the root of ``output_dir``, the final test.

The root of ``output_dir`` holds both the best model (a sentence-transformers folder written by
``Encoder.save``) and the run's working files (``checkpoints/``, ``metrics.jsonl``,
``config.yaml``, ``results.json``, ``tensorboard/``). The best model is first saved complete
into ``output_dir/.best-next`` (atomic) and then committed into the root entry by entry
(:func:`csekit.atomic.merge_dir`, as ``Encoder.save`` into a folder with other files does); the
complete ``.best-next`` folder and its manifest are the journal: if a kill interrupts the
commit, the next start (or ``--resume``) finishes it (:func:`recover_best`). The run's own
files are never touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from csekit.atomic import atomic_write_text, merge_dir
from csekit.modeling.saved.folder import BEST_STAGING, MODEL_MANIFEST
from csekit.precision import exact_fp32
from csekit.training.checkpoint import TrainerState, disk_errors, last_checkpoint, state_bytes
from csekit.training.config import TrainConfig

if TYPE_CHECKING:
    from csekit.modeling.encoder import Encoder

logger = logging.getLogger(__name__)

STAGING = BEST_STAGING
RUN_FILES = {"checkpoints", "metrics.jsonl", "config.yaml", "results.json", "tensorboard",
             STAGING}


@contextlib.contextmanager
def plain_fp32_forward(module: torch.nn.Module) -> Iterator[None]:
    """Run ``module`` as ``csekit eval`` does: its own forward in fp32, outside the autocast
    wrapper that Accelerate puts on a prepared model's ``forward`` for bf16/fp16 runs, and
    without TF32. Restored on exit (training goes on in mixed precision)."""
    patched = module.__dict__.get("forward")
    original = module.__dict__.get("_original_forward")
    swap = patched is not None and original is not None
    if swap:
        module.forward = original  # type: ignore[method-assign]
    try:
        with exact_fp32():
            yield
    finally:
        if swap:
            module.forward = patched  # type: ignore[method-assign]


def versions() -> dict[str, str]:
    import accelerate
    import transformers

    import csekit

    return {"csekit": csekit.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "python": platform.python_version()}


class BestModelKeeper:
    """Dev evaluation, the best model at the root of ``output_dir`` and the final test.

    It needs only what it reads: the run's (resolved) config, its output folder, the device
    to encode on and the number of processes; the encoder and the trainer state are passed
    per call. Only the main process calls it.
    """

    def __init__(self, config: TrainConfig, output_dir: Path, *, device: torch.device,
                 world_size: int) -> None:
        self.config = config
        self.root = Path(output_dir)
        self.device = device
        self.world_size = world_size

    def _encode_fn(self, enc: Encoder):
        bs = self.config.eval_batch_size
        device = self.device

        def encode(sentences: list[str]) -> torch.Tensor:
            with torch.no_grad():
                return enc.encode(sentences, batch_size=bs, device=device)

        return encode

    def evaluate_dev(self, enc: Encoder) -> float:
        """STS-B dev Spearman x 100 of ``enc`` (evaluation pooler); leaves it in train mode."""
        from csekit.evaluation import evaluate_sts

        enc.eval()
        try:
            with plain_fp32_forward(enc):
                res = evaluate_sts(self._encode_fn(enc), self.config.data_dir,
                                   tasks=["STSBenchmark"], split="dev")
        finally:
            enc.train()
        return float(res.spearman["STSBenchmark"])

    def metadata(self, state: TrainerState, score: float | None,
                 test: dict[str, Any] | None = None) -> dict[str, Any]:
        cfg = self.config
        return {
            "training_config": cfg.to_dict(),
            "objective": {"name": cfg.objective, **cfg.objective_hparams()},
            "versions": versions(),
            "step": state.step,
            "dev": {"stsb_spearman": score, "step": state.step, "history": list(state.history)},
            "test": test,
            "world_size": self.world_size,
        }

    def save(self, enc: Encoder, state: TrainerState, *, score: float | None) -> None:
        """Save ``enc`` as the best model at the root of ``output_dir`` (model weights only, not
        a full checkpoint)."""
        with disk_errors(self.root / STAGING, needed=state_bytes(enc) + 5_000_000,
                         what="the best model", last_good=last_checkpoint(self.root)):
            enc.save(self.root / STAGING, metadata=self.metadata(state, score),
                     lora_adapter=self.config.lora_save_adapter)
        commit_best(self.root)
        logger.info("best model saved to %s (STS-B dev %s)", self.root,
                    "n/a" if score is None else f"{score:.2f}")

    def final_test(self, state: TrainerState) -> dict[str, Any] | None:
        """7-task STS test of the best model at the root; table printed, ``results.json``
        written, and the test results added to the model's own ``csekit.json``."""
        from csekit.evaluation import TASKS, evaluate_sts
        from csekit.modeling.encoder import Encoder

        root = self.root
        if not (root / "modules.json").exists():
            logger.warning("no best model in %s: final test skipped", root)
            return None
        cfg = self.config
        best = Encoder.from_pretrained(str(root))
        device = self.device
        best.to(device)
        best.eval()

        def encode(sentences: list[str]) -> torch.Tensor:
            with torch.no_grad():
                return best.encode(sentences, batch_size=cfg.eval_batch_size, device=device)

        tasks = available_test_tasks(cfg.data_dir)
        if not tasks:
            logger.warning("no STS test files under %s: final test skipped", cfg.data_dir)
            return None
        if len(tasks) < len(TASKS):
            logger.warning("STS test files missing for %s: evaluating %s only",
                           ", ".join(t for t in TASKS if t not in tasks), ", ".join(tasks))
        res = evaluate_sts(encode, cfg.data_dir, tasks=tasks, split="test")
        table = res.table()
        print(f"\nSTS test (Spearman x 100) of the best model, {root}:\n{table}", flush=True)
        test = res.to_dict()
        results = {"best_step": state.best_step, "stsb_dev": state.best_score,
                   "test": test, "steps": state.step, "versions": versions()}
        atomic_write_text(root / "results.json", json.dumps(results, indent=1))
        # The model's own metadata gets the test results; its weights are not rewritten.
        meta = json.loads((root / "csekit.json").read_text(encoding="utf-8")) \
            if (root / "csekit.json").exists() else {}
        meta["test"] = test
        atomic_write_text(root / "csekit.json", json.dumps(meta, indent=2, default=str) + "\n")
        # ... and so does its model card, which is rendered from that metadata.
        from csekit.modeling.saved.model_card import CARD_FILE, build_model_card

        atomic_write_text(root / CARD_FILE,
                          build_model_card(json.loads(json.dumps(meta, default=str))))
        return test


def commit_best(root: Path) -> None:
    """Move the complete ``root/.best-next`` model into ``root`` (keeps the run's files)."""
    staging = root / STAGING
    if not (staging / MODEL_MANIFEST).is_file() and not (staging / "modules.json").exists():
        shutil.rmtree(staging, ignore_errors=True)  # incomplete: the old best stays
        return
    merge_dir(staging, root, manifest=MODEL_MANIFEST)


def recover_best(root: Path) -> None:
    """Finish a commit interrupted by a kill; drop leftovers of an interrupted staging save."""
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.name.startswith(f".{STAGING}.tmp-"):
            shutil.rmtree(p, ignore_errors=True)
    if (root / STAGING).exists():
        logger.warning("finishing the interrupted save of the best model in %s", root)
        commit_best(root)


def available_test_tasks(data_dir: str | None) -> list[str]:
    """The STS tasks whose SentEval test files exist under ``data_dir``."""
    from csekit.evaluation import TASKS, resolve_data_dir
    from csekit.evaluation.tasks import SICK_FILES, STS_YEARS, STSB_FILES

    down = resolve_data_dir(data_dir)
    found = []
    for task in TASKS:
        if task in STS_YEARS:
            ok = any((down / "STS" / STS_YEARS[task][0]).glob("STS.input.*.txt"))
        elif task == "STSBenchmark":
            ok = (down / "STS" / "STSBenchmark" / STSB_FILES["test"]).is_file()
        else:
            ok = (down / "SICK" / SICK_FILES["test"]).is_file()
        if ok:
            found.append(task)
    return found

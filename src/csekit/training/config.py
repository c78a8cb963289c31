"""``TrainConfig``: every option of ``csekit train``, loaded from YAML and overridden by flags.

Defaults are the published ones (``REFERENCE.md``): SimCSE unsupervised on BERT-base (batch 64,
lr 3e-5, T 0.05, max_seq_len 32, 1 epoch, no warm-up, seed 42, STS-B dev every 125 steps) and
the ClusterNS / Focal-InfoNCE hyper-parameters (k 128, kmeans_lr 1e-3, start cosine 0.4,
bml_weight 1e-4, alpha 0.2, beta 0.5, margin 0.3).

Relative paths (model, train_file, data_dir, output_dir) are used as given, i.e. they resolve
against the current working directory of the process, not against the YAML file's folder.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from csekit.errors import ConfigError

logger = logging.getLogger(__name__)

OBJECTIVES = ("simcse", "focal", "clusterns", "clusterns-focal")
POOLERS = ("cls", "cls_before_pooler", "avg", "avg_first_last", "avg_top2")
MLP_MODES = ("train", "always", "none")
PRECISIONS = ("fp32", "bf16", "fp16")
CENTROID_UPDATES = ("sum", "mean")
BML_REDUCTIONS = ("all", "pairs")
CLUSTER_INITS = ("greedy_chain", "kmeans++")
ON_BAD_LINE = ("error", "skip")


@dataclass
class TrainConfig:
    """All options of a training run. ``batch_size`` is the GLOBAL batch (all processes).

    Gradient accumulation (``grad_accum_steps`` > 1) sums gradients of several global batches
    before one optimiser step; each batch still sees only its own ``batch_size - 1`` in-batch
    negatives, so accumulation does NOT enlarge the set of negatives.
    """

    # --- what to train, on what, where to write
    model: str = "bert-base-uncased"
    train_file: str | None = None
    output_dir: str = "outputs/run"
    data_dir: str | None = None  # SentEval folder (contains downstream/); None: no evaluation
    objective: str = "simcse"
    # --- encoder
    pooler: str = "cls"  # with mlp=train, evaluation uses cls_before_pooler (SimCSE)
    mlp: str = "train"
    dropout: float | None = None  # None: the backbone's own (0.1 for BERT/RoBERTa)
    trust_remote_code: bool = False
    max_seq_len: int = 32
    # --- objective hyper-parameters
    temperature: float = 0.05
    margin: float = 0.3  # Focal-InfoNCE hardness m
    n_clusters: int = 128
    kmeans_lr: float = 1e-3
    kmeans_start_cosine: float = 0.4
    bml_weight: float = 1e-4
    bml_alpha: float = 0.2
    bml_beta: float = 0.5
    hard_negatives: bool = True
    centroid_update: str = "sum"  # "sum" as the released ClusterNS code; "mean" as textbook
    bml_reduction: str = "all"  # "all": mean over all B x B entries (published); "pairs"
    cluster_init: str = "greedy_chain"  # published greedy chain; or "kmeans++"
    # --- data
    dedup: bool = False
    on_bad_line: str = "error"
    # --- data formats (#13)
    text_column: str | None = None  # JSONL/CSV/Parquet/datasets column; None: the unambiguous one
    # --- optimisation
    batch_size: int = 64
    learning_rate: float = 3e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0  # the HF Trainer default SimCSE ran with; None/0: off
    grad_accum_steps: int = 1
    precision: str = "fp32"
    epochs: int = 1
    max_steps: int | None = None  # overrides epochs when set
    seed: int = 42
    skip_nonfinite: bool = False
    # --- evaluation, early stopping
    eval_steps: int = 125
    eval_batch_size: int = 128
    patience: int | None = None  # evaluations without improvement before stopping; None: off
    eval_at_start: bool = False  # also evaluate the initial model (step 0); it competes for best
    final_test: bool = True  # 7-task STS test of the best model at the end
    # --- logging and checkpoints
    logging_steps: int = 10
    tensorboard: bool = False
    save_steps: int | None = None  # None: checkpoint at every evaluation (or eval_steps)
    save_total_limit: int = 2
    resume: bool = False
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes kept in the metadata

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}; "
                              f"see `csekit train --help` for the valid names")
        cfg = cls()
        for key, value in data.items():
            setattr(cfg, key, _coerce(cls, key, value, source))
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            line = getattr(getattr(err, "problem_mark", None), "line", None)
            where = f" line {line + 1}" if line is not None else ""
            raise ConfigError(f"config file {p}{where}: not valid YAML") from err
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p}: expected a mapping of option: value")
        return cls.from_dict({k.replace("-", "_"): v for k, v in data.items()}, source=str(p))

    def override(self, **values: Any) -> TrainConfig:
        """A copy with the given (non-None) values replaced, e.g. from CLI flags."""
        data = dataclasses.asdict(self)
        for key, value in values.items():
            if value is not None:
                data[key] = value
        return TrainConfig.from_dict(data, source="command line")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ------------------------------------------------------------------ derived values
    @property
    def uses_clusters(self) -> bool:
        return self.objective in ("clusterns", "clusterns-focal")

    def objective_hparams(self) -> dict[str, Any]:
        """Keyword arguments for ``csekit.objectives.build_objective``."""
        hp: dict[str, Any] = {"temperature": self.temperature}
        if self.objective in ("focal", "clusterns-focal"):
            hp["margin"] = self.margin
        if self.uses_clusters:
            hp.update(n_clusters=self.n_clusters, kmeans_lr=self.kmeans_lr,
                      kmeans_start_cosine=self.kmeans_start_cosine, bml_weight=self.bml_weight,
                      alpha=self.bml_alpha, beta=self.bml_beta,
                      hard_negatives=self.hard_negatives, update_rule=self.centroid_update,
                      bml_reduction=self.bml_reduction, init=self.cluster_init, seed=self.seed)
        return hp

    # ------------------------------------------------------------------ validation
    def validate(self, *, world_size: int = 1) -> None:
        """Raise :class:`ConfigError` (one line) for contradictory or out-of-range options."""
        _choice("objective", self.objective, OBJECTIVES)
        _choice("pooler", self.pooler, POOLERS)
        _choice("mlp", self.mlp, MLP_MODES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("centroid_update", self.centroid_update, CENTROID_UPDATES)
        _choice("on_bad_line", self.on_bad_line, ON_BAD_LINE)
        _choice("bml_reduction", self.bml_reduction, BML_REDUCTIONS)
        _choice("cluster_init", self.cluster_init, CLUSTER_INITS)
        if not self.train_file:
            raise ConfigError("no training corpus: give --train-file FILE (one sentence a line)")
        _positive("batch_size", self.batch_size)
        _positive("max_seq_len", self.max_seq_len)
        _positive("eval_steps", self.eval_steps)
        _positive("grad_accum_steps", self.grad_accum_steps)
        _positive("epochs", self.epochs)
        _positive("logging_steps", self.logging_steps)
        _positive("eval_batch_size", self.eval_batch_size)
        if self.max_steps is not None:
            _positive("max_steps", self.max_steps)
        if self.save_steps is not None:
            _positive("save_steps", self.save_steps)
        if self.save_total_limit < 1:
            raise ConfigError("save_total_limit must be >= 1 (the last checkpoint is needed "
                              "to resume)")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be >= 2: contrastive training needs in-batch "
                              "negatives")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.warmup_steps and self.warmup_ratio:
            raise ConfigError("give warmup_steps or warmup_ratio, not both")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            raise ConfigError(f"max_grad_norm must be >= 0, got {self.max_grad_norm}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be >= 1 evaluations (or unset), got {self.patience}")
        if self.patience is not None and not self.data_dir:
            raise ConfigError("patience (early stopping) needs STS-B dev: give --data-dir")
        if self.batch_size % world_size:
            raise ConfigError(f"batch_size {self.batch_size} (global) is not divisible by the "
                              f"{world_size} processes; pick a multiple of {world_size}")
        if self.objective == "focal" and not 0 <= self.margin < 1:
            raise ConfigError(f"margin must be in [0, 1), got {self.margin}")
        if self.uses_clusters:
            _positive("n_clusters", self.n_clusters)
            if self.n_clusters > self.batch_size:
                raise ConfigError(f"n_clusters {self.n_clusters} is larger than the global batch "
                                  f"{self.batch_size}: centroids are initialised from one batch; "
                                  f"lower --n-clusters or raise --batch-size")
            if self.hard_negatives and self.n_clusters < 2:
                raise ConfigError("hard negatives need n_clusters >= 2 (the second-nearest "
                                  "centroid); use --no-hard-negatives or more clusters")
            if not 0 < self.kmeans_lr <= 1:
                raise ConfigError(f"kmeans_lr must be in (0, 1], got {self.kmeans_lr}")
            if not -1.0 <= self.kmeans_start_cosine <= 1.0:
                raise ConfigError(f"kmeans_start_cosine must be in [-1, 1], "
                                  f"got {self.kmeans_start_cosine}")
            if self.objective == "clusterns-focal" and not 0 <= self.margin < 1:
                raise ConfigError(f"margin must be in [0, 1), got {self.margin}")
            if self.bml_weight < 0:
                raise ConfigError(f"bml_weight must be >= 0, got {self.bml_weight}")


# ---------------------------------------------------------------------- helpers
def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _coerce(cls: type, key: str, value: Any, source: str) -> Any:
    """Check the YAML/CLI value against the field's default type (int, float, bool, str)."""
    f = next(f for f in fields(cls) if f.name == key)
    default = f.default if f.default is not dataclasses.MISSING else None
    ann = str(f.type)
    if value is None:
        if "None" in ann:
            return None
        raise ConfigError(f"{source}: option {key} cannot be empty")
    try:
        if ann.startswith("bool"):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            raise ValueError
        if ann.startswith("int") or ann == "int | None":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and value.is_integer():
                return int(value)
            return int(value) if isinstance(value, (int, str)) else _fail()
        if ann.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if ann.startswith("str"):
            return str(value) if not isinstance(value, (dict, list)) else _fail()
        if ann.startswith("dict"):
            return dict(value)
    except (TypeError, ValueError):
        kind = ann.split(" ")[0]
        raise ConfigError(f"{source}: option {key} expects {kind}, got {value!r}") from None
    return value if default is None or value is not None else default


def _fail() -> Any:
    raise ValueError

"""``TrainConfig``: every option of ``csekit train``, loaded from YAML and overridden by flags.

Defaults are the published ones (``REFERENCE.md``): SimCSE's protocol (T 0.05, max_seq_len 32,
1 epoch, no warm-up, seed 42, STS-B dev every 125 steps). The options that differ between methods
(batch, learning rate, k, kmeans_lr, start cosine, BML weights, margin) default to ``None`` here
and take the chosen objective's published values from the one table
:data:`csekit.objectives.defaults.PUBLISHED_DEFAULTS` (:meth:`TrainConfig.resolved`); an
option given in a recipe or on the command line always wins.

Relative paths (model, train_file, data_dir, output_dir) are used as given, i.e. they resolve
against the current working directory of the process, not against the YAML file's folder.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from csekit.clustering.state import INIT_METHODS as CLUSTER_INITS
from csekit.clustering.update import UPDATE_RULES as CENTROID_UPDATES
from csekit.data.tabular import ON_BAD_LINE
from csekit.data.triplets import SUPERVISION_MODES, parse_columns
from csekit.errors import ConfigError
from csekit.losses.margin import BML_REDUCTIONS
from csekit.modeling.representation.pooling import MLP_MODES, POOLERS, PROMPT_POOLERS
from csekit.objectives.defaults import PUBLISHED_DEFAULTS, objective_defaults
from csekit.precision import PRECISIONS

logger = logging.getLogger(__name__)

OBJECTIVES: tuple[str, ...] = tuple(PUBLISHED_DEFAULTS)
# The options whose default depends on the objective (None until resolved()).
OBJECTIVE_DEPENDENT: tuple[str, ...] = (
    "batch_size", "learning_rate", "temperature", "margin", "n_clusters", "kmeans_lr",
    "kmeans_start_cosine", "bml_weight", "bml_alpha", "bml_beta",
)


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
    dropout: float | None = None  # None: the backbone's own (0.1 for BERT/RoBERTa); sets every
    # dropout knob of the architecture (csekit.modeling.loading.dropout)
    trust_remote_code: bool = False
    max_seq_len: int = 32
    # --- other backbones (issue #27, docs/backbones.md)
    instruction: str | None = None  # text before every sentence (decoder embedding models)
    bidirectional: bool = False  # decoder attention made bidirectional (Gemma family only)
    gradient_checkpointing: bool = False  # recompute activations in backward (turns lean off)
    lora_r: int | None = None  # LoRA rank through peft; None: full fine-tuning
    lora_alpha: float | None = None  # None: 2 x lora_r (LLM2Vec's rule)
    lora_dropout: float = 0.05
    lora_target_modules: str | None = None  # "q_proj,v_proj"; None: the architecture's default
    lora_save_adapter: bool = False  # also save the adapter (lora_adapter/) beside the merged model
    # --- prompt pooler (PromptBERT; csekit.modeling.representation.prompt), used with pooler: prompt.
    # Templates hold [X] (sentence) and [MASK]; unset: the model family's PromptBERT T1 / T2.
    # T1 makes view 1 and evaluation, T2 the other views (T1 alone: every view uses it).
    # With the prompt pooler max_seq_len counts the sentence's tokens (template added on top).
    prompt_template: str | None = None
    prompt_template2: str | None = None
    # subtract the template-only state in training; None: on for prompt (PromptBERT), off for
    # prompteol (PromptEOL)
    prompt_denoise: bool | None = None
    prompt_denoise_grad: bool = True  # gradient through it (PromptBERT's default)
    prompt_positions: str = "model"  # template-state position ids: model | reference
    prompt_eval_denoise: bool = False  # PromptBERT's unsupervised evaluation: no denoising
    prompt_eval_period: bool = True  # evaluation appends '.' (PromptBERT's rule)
    # --- objective hyper-parameters
    # (None: the objective's published default, csekit.objectives.defaults)
    temperature: float | None = None
    margin: float | None = None  # Focal-InfoNCE hardness m
    n_clusters: int | None = None
    kmeans_lr: float | None = None
    kmeans_start_cosine: float | None = None
    bml_weight: float | None = None
    bml_alpha: float | None = None
    bml_beta: float | None = None
    hard_negatives: bool = True
    centroid_update: str = "sum"  # "sum" as the released ClusterNS code; "mean" as textbook
    bml_reduction: str = "all"  # "all": mean over all B x B entries (published); "pairs"
    cluster_init: str = "greedy_chain"  # published greedy chain; or "kmeans++"
    # --- data
    dedup: bool = False
    on_bad_line: str = "error"
    # --- data formats (#13)
    text_column: str | None = None  # JSONL/CSV/Parquet/datasets column; None: the unambiguous one
    # --- supervised training on NLI pairs / triplets (issue #14). "auto": from the training
    # file (one sentence a line: unsupervised; a table: pairs or triplets by its columns); the
    # trainer records the mode it chose here, so config.yaml holds it.
    supervision: str = "auto"
    text_columns: str | None = None  # "anchor,positive[,hard_negative]"; None: sent0,sent1,...
    hard_negative_weight: float = 0.0  # SimCSE's log-space weight on row i's own hard negative
    # switch-case positives (CARDS, Wang et al. 2022; csekit.data.switch_case): the probability
    # that a word's first letter flips case in the positive view; 0: off (unsupervised only)
    switch_case: float = 0.0
    # --- optimisation
    batch_size: int | None = None  # None: the objective's published default
    learning_rate: float | None = None
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0  # the HF Trainer default SimCSE ran with; None/0: off
    grad_accum_steps: int = 1
    mini_batch_size: int | None = None  # gradient caching (docs/gradient_caching.md); None: off
    precision: str = "fp32"
    epochs: int = 1
    max_steps: int | None = None  # overrides epochs when set
    seed: int = 42
    skip_nonfinite: bool = False
    # --- training-step speed (issue #17; same maths, see docs/training_speed.md)
    # train forward as up to N length-sorted sub-batches; 1: one padded batch; None (default):
    # 4 on CPU, where a quiet machine measured the gain, 1 on accelerators until gpu_check.sh
    # has measured it there (docs/training_speed.md)
    length_subbatches: int | None = None
    compile: bool = False  # torch.compile the backbone (did not pay on CPU when measured)
    # BERT / RoBERTa train forward through csekit.modeling.speed.train_forward (stacked QKV; [CLS]
    # pooling computes only position 0 in the last layer); off for other backbones and prompts.
    # None (default): on on CPU, where it was measured; off on accelerators until gpu_check.sh
    # has recorded its equality and speed there (docs/training_speed.md)
    lean_forward: bool | None = None
    # --- evaluation, early stopping
    eval_steps: int = 125  # 0: no dev evaluation (the best model is then the last one)
    eval_batch_size: int = 128
    patience: int | None = None  # evaluations without improvement before stopping; None: off
    eval_at_start: bool = False  # also evaluate the initial model (step 0); it competes for best
    final_test: bool = True  # 7-task STS test of the best model at the end
    # --- logging and checkpoints
    logging_steps: int = 10
    tensorboard: bool = False
    # full checkpoint every N steps, independent of eval_steps (and at the end, on a signal,
    # on early stopping); an improving evaluation writes the best model's weights only
    save_steps: int = 1000
    save_total_limit: int = 2
    resume: bool = False
    progress: bool = True
    # --- GPU throughput (issue #18)
    tf32: bool = True  # TF32 matrix products for fp32 runs on Ampere+ GPUs (--no-tf32: off)
    prefetch: bool = True  # tokenise the next batch in a background thread (pinned on CUDA)
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

    def resolved(self) -> TrainConfig:
        """A copy where every objective-dependent option left unset (None) takes the chosen
        objective's published default (:func:`csekit.objectives.defaults.objective_defaults`)."""
        _choice("objective", self.objective, OBJECTIVES)
        table = objective_defaults(self.objective)
        return dataclasses.replace(self, **{k: table[k] for k in OBJECTIVE_DEPENDENT
                                            if getattr(self, k) is None})

    def defaulted_options(self) -> dict[str, Any]:
        """The objective-dependent options this (unresolved) config leaves to the table."""
        table = objective_defaults(self.objective)
        return {k: table[k] for k in OBJECTIVE_DEPENDENT if getattr(self, k) is None}

    def effective_summary(self) -> str:
        """One line of the settings that define the run, for the start of a training log."""
        cfg = self.resolved()
        keys = ["objective", "model", "batch_size", "learning_rate", "temperature", "pooler",
                "mlp", "max_seq_len", "precision"]
        if cfg.objective in ("focal", "clusterns-focal"):
            keys.append("margin")
        if cfg.uses_clusters:
            keys += ["n_clusters", "kmeans_lr", "kmeans_start_cosine", "bml_weight",
                     "bml_alpha", "bml_beta"]
        keys += [k for k in ("dropout", "instruction", "lora_r", "lora_alpha", "lora_dropout",
                             "lora_target_modules", "bidirectional", "gradient_checkpointing",
                             "mini_batch_size")
                 if getattr(cfg, k) not in (None, False) and (k[:5] != "lora_" or cfg.lora_r)]
        from_table = set(self.defaulted_options())
        return ", ".join(f"{k}={getattr(cfg, k)}" + ("*" if k in from_table else "")
                         for k in keys) + "  (* = the objective's published default)"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ------------------------------------------------------------------ derived values
    def prompt_config(self) -> Any:
        """The PromptConfig of the prompt pooler, or None for the other poolers."""
        from csekit.modeling.representation.prompt import PromptConfig

        prompt_set = (self.prompt_template, self.prompt_template2)
        if self.pooler not in PROMPT_POOLERS:
            if any(t is not None for t in prompt_set):
                raise ConfigError("prompt_template / prompt_template2 need pooler: prompt "
                                  "or prompteol")
            return None
        if self.prompt_template2 is not None and self.prompt_template is None:
            raise ConfigError("prompt_template2 (T2) needs prompt_template (T1) as well")
        return PromptConfig(templates=tuple(t for t in prompt_set if t is not None),
                            denoise=self.prompt_denoise, eval_denoise=self.prompt_eval_denoise,
                            eval_period=self.prompt_eval_period,
                            denoise_grad=self.prompt_denoise_grad, positions=self.prompt_positions,
                            last_token=self.pooler == "prompteol")

    def lora_settings(self) -> Any:
        """The LoraSettings of a LoRA run (``lora_r`` set), else None."""
        if self.lora_r is None:
            if self.lora_save_adapter or self.lora_target_modules:
                raise ConfigError("lora_save_adapter / lora_target_modules need lora_r (LoRA)")
            return None
        from csekit.modeling.loading.lora import LoraSettings

        targets = None
        if self.lora_target_modules:
            targets = tuple(t.strip() for t in self.lora_target_modules.split(",") if t.strip())
        alpha = self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora_r
        return LoraSettings(r=self.lora_r, alpha=alpha, dropout=self.lora_dropout,
                            target_modules=targets or None)

    @property
    def dev_eval(self) -> bool:
        """STS-B dev evaluation during training: a --data-dir and --eval-steps > 0. Without
        it the best model is the last one (saved at the end)."""
        return self.data_dir is not None and self.eval_steps > 0

    @property
    def uses_clusters(self) -> bool:
        return self.objective in ("clusterns", "clusterns-focal")

    def objective_hparams(self) -> dict[str, Any]:
        """Keyword arguments for ``csekit.objectives.build_objective`` (resolved values)."""
        cfg = self.resolved()
        hp: dict[str, Any] = {"temperature": cfg.temperature,
                              "hard_negative_weight": cfg.hard_negative_weight}
        if self.objective in ("focal", "clusterns-focal"):
            hp["margin"] = cfg.margin
        if self.uses_clusters:
            hp.update(n_clusters=cfg.n_clusters, kmeans_lr=cfg.kmeans_lr,
                      kmeans_start_cosine=cfg.kmeans_start_cosine, bml_weight=cfg.bml_weight,
                      alpha=cfg.bml_alpha, beta=cfg.bml_beta,
                      hard_negatives=self.hard_negatives, update_rule=self.centroid_update,
                      bml_reduction=self.bml_reduction, init=self.cluster_init, seed=self.seed)
        return hp

    # ------------------------------------------------------------------ validation
    def validate(self, *, world_size: int = 1) -> None:
        """Raise :class:`ConfigError` (one line) for contradictory or out-of-range options.

        Checks the resolved values. The objective's own hyper-parameters (temperature, margin,
        k, kmeans_lr, ...) are checked where they are defined, by building the objective
        (cheap: no model); only options that combine several settings are checked here.
        """
        from csekit.objectives import build_objective
        from csekit.training.gradcache import check_mini_batch_size

        _choice("objective", self.objective, OBJECTIVES)
        cfg = self.resolved()
        _choice("pooler", cfg.pooler, POOLERS)
        _choice("mlp", cfg.mlp, MLP_MODES)
        _choice("precision", cfg.precision, PRECISIONS)
        _choice("centroid_update", cfg.centroid_update, CENTROID_UPDATES)
        _choice("on_bad_line", cfg.on_bad_line, ON_BAD_LINE)
        _choice("bml_reduction", cfg.bml_reduction, BML_REDUCTIONS)
        _choice("cluster_init", cfg.cluster_init, CLUSTER_INITS)
        _choice("supervision", cfg.supervision, SUPERVISION_MODES)
        parse_columns(cfg.text_columns)  # 2 or 3 distinct names; the file is checked at start
        if not 0.0 <= cfg.switch_case <= 1.0:
            raise ConfigError(f"switch_case is a probability in [0, 1], got {cfg.switch_case}")
        if cfg.switch_case and cfg.supervision in ("pairs", "triplets"):
            raise ConfigError("switch_case augments the positive view of unsupervised training; "
                              f"this run is {cfg.supervision}")
        if cfg.hard_negative_weight != 0 and cfg.supervision in ("unsupervised", "pairs"):
            raise ConfigError("hard_negative_weight needs triplets (a hard_neg column); "
                              f"this run is {cfg.supervision}")
        if not cfg.train_file:
            raise ConfigError("no training corpus: give --train-file FILE (one sentence a line, "
                              "or a .csv/.tsv/.jsonl/.parquet of NLI pairs or triplets)")
        for name in ("batch_size", "max_seq_len", "grad_accum_steps", "epochs",
                     "logging_steps", "eval_batch_size"):
            _positive(name, getattr(cfg, name))
        if cfg.eval_steps != 0:
            _positive("eval_steps", cfg.eval_steps)  # (0: no dev evaluation)
        if cfg.length_subbatches is not None:
            _positive("length_subbatches", cfg.length_subbatches)
        if cfg.max_steps is not None:
            _positive("max_steps", cfg.max_steps)
        _positive("save_steps", cfg.save_steps)
        if cfg.save_total_limit < 1:
            raise ConfigError("save_total_limit must be >= 1 (the last checkpoint is needed "
                              "to resume)")
        if cfg.batch_size < 2:
            raise ConfigError("batch_size must be >= 2: contrastive training needs in-batch "
                              "negatives")
        if not cfg.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {cfg.learning_rate}")
        if cfg.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {cfg.weight_decay}")
        if cfg.dropout is not None and not 0.0 <= cfg.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {cfg.dropout}")
        if not 0.0 <= cfg.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
        if cfg.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {cfg.warmup_steps}")
        if cfg.warmup_steps and cfg.warmup_ratio:
            raise ConfigError("give warmup_steps or warmup_ratio, not both")
        if cfg.max_grad_norm is not None and cfg.max_grad_norm < 0:
            raise ConfigError(f"max_grad_norm must be >= 0, got {cfg.max_grad_norm}")
        if cfg.patience is not None and cfg.patience < 1:
            raise ConfigError(f"patience must be >= 1 evaluations (or unset), got {cfg.patience}")
        if cfg.patience is not None and not cfg.data_dir:
            raise ConfigError("patience (early stopping) needs STS-B dev: give --data-dir")
        if cfg.eval_steps == 0 and cfg.patience is not None:
            raise ConfigError("patience (early stopping) needs dev evaluation, which "
                              "--eval-steps 0 switches off")
        if cfg.eval_steps == 0 and cfg.eval_at_start:
            raise ConfigError("eval_at_start needs dev evaluation, which --eval-steps 0 "
                              "switches off")
        if cfg.batch_size % world_size:
            raise ConfigError(f"batch_size {cfg.batch_size} (global) is not divisible by the "
                              f"{world_size} processes; pick a multiple of {world_size}")
        check_mini_batch_size(cfg.mini_batch_size, cfg.batch_size, world_size)
        build_objective(cfg.objective, **cfg.objective_hparams())  # the objective's own checks
        cfg.prompt_config()  # the template syntax and prompt options
        cfg.lora_settings()  # rank, alpha, dropout
        if cfg.instruction is not None and (not cfg.instruction or cfg.pooler in PROMPT_POOLERS):
            raise ConfigError("instruction must be non-empty text, and does not combine with the "
                              "prompt poolers (put it into the template)")
        if cfg.uses_clusters:
            if cfg.n_clusters > cfg.batch_size:
                raise ConfigError(f"n_clusters {cfg.n_clusters} is larger than the global batch "
                                  f"{cfg.batch_size}: centroids are initialised from one batch; "
                                  f"lower --n-clusters or raise --batch-size")
            if cfg.hard_negatives and cfg.n_clusters < 2:
                raise ConfigError("hard negatives need n_clusters >= 2 (the second-nearest "
                                  "centroid); use --no-hard-negatives or more clusters")


# ---------------------------------------------------------------------- helpers
def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(cls: type, key: str, value: Any, source: str) -> Any:
    """Check a YAML / CLI value against the field's declared type (the dataclass annotation).

    Accepted: the type itself; for int, a float with an integral value or an int string; for
    float, an int or a numeric string (YAML 1.1 reads ``1e-5`` as a string); for bool,
    true/false/yes/no/1/0 strings; None only for ``X | None`` fields.
    """
    tp = _field_types(cls)[key]
    args = typing.get_args(tp)
    optional = isinstance(tp, types.UnionType) and type(None) in args
    base = next((a for a in args if a is not type(None)), tp) if optional else tp
    base = typing.get_origin(base) or base
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: option {key} cannot be empty")
    try:
        return _CONVERT[base](value)
    except (TypeError, ValueError, KeyError):
        raise ConfigError(f"{source}: option {key} expects {base.__name__}, got {value!r}") \
            from None


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _BOOL_STRINGS:
        return _BOOL_STRINGS[value.lower()]
    raise ValueError(value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (int, str)):
        return int(value)
    raise TypeError(value)


def _to_float(value: Any) -> float:
    if isinstance(value, (bool, dict, list)):
        raise TypeError(value)
    return float(value)


def _to_str(value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise TypeError(value)
    return str(value)


_BOOL_STRINGS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_CONVERT: dict[type, Any] = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str,
                             dict: dict}

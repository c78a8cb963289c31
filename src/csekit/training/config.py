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

from csekit.errors import ConfigError
from csekit.modeling.representation.pooling import PROMPT_POOLERS
from csekit.objectives.defaults import objective_defaults
from csekit.training.config_checks import OBJECTIVES, validate_config

logger = logging.getLogger(__name__)

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
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}; choose one of "
                              f"{', '.join(OBJECTIVES)}")
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
        """Raise :class:`ConfigError` (one line) for contradictory or out-of-range options
        (:func:`csekit.training.config_checks.validate_config`)."""
        validate_config(self, world_size=world_size)


# ---------------------------------------------------------------------- helpers
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

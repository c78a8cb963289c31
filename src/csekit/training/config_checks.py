"""The checks of ``csekit train``'s options that combine several settings or ranges
(:meth:`csekit.training.config.TrainConfig.validate`): one line (:class:`ConfigError`, exit 2)
for a contradictory or out-of-range option.

The resolved values are checked. The objective's own hyper-parameters (temperature, margin, k,
kmeans_lr, ...) are checked where they are defined, by building the objective (cheap: no model).
"""

from __future__ import annotations

from typing import Any

from csekit.clustering.state import INIT_METHODS as CLUSTER_INITS
from csekit.clustering.update import UPDATE_RULES as CENTROID_UPDATES
from csekit.data.tabular import ON_BAD_LINE
from csekit.data.triplets import SUPERVISION_MODES, parse_columns
from csekit.errors import ConfigError
from csekit.losses.margin import BML_REDUCTIONS
from csekit.modeling.representation.pooling import MLP_MODES, POOLERS, PROMPT_POOLERS
from csekit.objectives.defaults import PUBLISHED_DEFAULTS
from csekit.precision import PRECISIONS

OBJECTIVES: tuple[str, ...] = tuple(PUBLISHED_DEFAULTS)


def validate_config(config: Any, *, world_size: int = 1) -> None:
    """Raise :class:`ConfigError` for the first contradictory or out-of-range option of
    ``config`` (a :class:`~csekit.training.config.TrainConfig`) run on ``world_size``
    processes."""
    from csekit.objectives import build_objective
    from csekit.training.gradcache import check_mini_batch_size

    _choice("objective", config.objective, OBJECTIVES)
    cfg = config.resolved()
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




def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


__all__ = ["BML_REDUCTIONS", "CENTROID_UPDATES", "CLUSTER_INITS", "MLP_MODES", "OBJECTIVES",
           "ON_BAD_LINE", "POOLERS", "PRECISIONS", "SUPERVISION_MODES", "validate_config"]

"""LoRA adapters on the backbone, through ``peft`` (the optional extra ``csekit[lora]``).

:func:`apply_lora` injects LoRA layers into the backbone in place (``peft``'s
``inject_adapter_in_model``: the module tree keeps its names, ``backbone.config`` stays) and
freezes every backbone weight but the adapters; the encoder's MLP head, outside the backbone,
still trains. Saving writes the *merged* model (W + B A scaling in place of each adapted
layer, :func:`merged_copy`), so the folder is a plain model that sentence-transformers loads,
and on request the adapter itself (:func:`save_adapter`, loadable with
``peft.PeftModel.from_pretrained(base, folder)``).

Default target modules per architecture (:data:`DEFAULT_TARGETS`): for decoder LLMs the
attention and MLP projections, as LLM2Vec's released code adapts Llama / Mistral / Gemma / Qwen2;
for the encoders every attention projection, csekit's choice (no paper publishes LoRA SimCSE on
them; docs/backbones.md).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from csekit.errors import ConfigError, first_line

logger = logging.getLogger(__name__)

ADAPTER_DIR = "lora_adapter"
_DECODER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_BERT = ("query", "key", "value")
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    **{t: _BERT for t in ("bert", "roberta", "xlm-roberta", "electra", "albert", "camembert")},
    "deberta-v2": ("query_proj", "key_proj", "value_proj"),
    "mpnet": ("q", "k", "v"),
    "modernbert": ("Wqkv", "Wo"),
    **{t: _DECODER for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2",
                             "gemma3_text", "smollm3")},
}


@dataclass(frozen=True)
class LoraSettings:
    """``--lora-r`` / ``--lora-alpha`` / ``--lora-dropout`` / ``--lora-target-modules``.

    ``target_modules`` None: :data:`DEFAULT_TARGETS` for the model type.
    """

    r: int
    alpha: float = 16.0
    dropout: float = 0.05  # LLM2Vec's default (experiments/run_simcse.py)
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"lora_r must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise ConfigError(f"lora_alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.dropout}")

    def targets_for(self, model_type: str) -> list[str]:
        if self.target_modules:
            return list(self.target_modules)
        if model_type not in DEFAULT_TARGETS:
            raise ConfigError(f"LoRA: no default target modules for model type {model_type!r}; "
                              "name them with --lora-target-modules (e.g. q_proj,v_proj)")
        return list(DEFAULT_TARGETS[model_type])


def _peft() -> Any:
    try:
        import peft
    except ImportError as err:
        raise ConfigError("LoRA needs peft: pip install 'csekit[lora]'") from err
    return peft


def apply_lora(backbone: nn.Module, settings: LoraSettings) -> list[str]:
    """Inject LoRA layers into ``backbone`` in place; only they stay trainable. Returns the
    target module names. ConfigError (one line) where the backbone has none of them."""
    peft = _peft()
    model_type = str(getattr(backbone.config, "model_type", ""))
    targets = settings.targets_for(model_type)
    cfg = peft.LoraConfig(r=settings.r, lora_alpha=settings.alpha,
                          lora_dropout=settings.dropout, target_modules=targets, bias="none")
    try:
        peft.inject_adapter_in_model(cfg, backbone)
    except ValueError as err:  # NoMatchingPeftModuleError and bad target specs
        raise ConfigError(f"LoRA on {type(backbone).__name__}: {first_line(err)} "
                          f"(targets: {', '.join(targets)})") from err
    for name, p in backbone.named_parameters():
        p.requires_grad = "lora_" in name
    n_train = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in backbone.parameters())
    logger.info("LoRA r=%d alpha=%s dropout=%s on %s: %d of %d backbone weights train",
                settings.r, settings.alpha, settings.dropout, ", ".join(targets), n_train, n_all)
    return targets


def _tuner_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)]


def has_lora(backbone: nn.Module) -> bool:
    """Whether LoRA layers are injected into ``backbone``."""
    return hasattr(backbone, "peft_config")


def merged_copy(backbone: nn.Module) -> nn.Module:
    """A copy of ``backbone`` with every LoRA layer merged into its base layer and removed: a
    plain ``transformers`` model with the adapted weights (the original is untouched)."""
    out = copy.deepcopy(backbone)
    for name, layer in _tuner_layers(out):
        layer.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, child, layer.get_base_layer())
    if hasattr(out, "peft_config"):
        del out.peft_config
    for p in out.parameters():
        p.requires_grad = True
    return out


def save_adapter(backbone: nn.Module, folder: Path, base_model: str) -> None:
    """Write the adapter as ``peft`` saves one (``adapter_config.json`` +
    ``adapter_model.safetensors``) into ``folder``; ``base_model`` is recorded as its base."""
    peft = _peft()
    from safetensors.torch import save_file

    state = peft.get_peft_model_state_dict(backbone)
    folder.mkdir(parents=True, exist_ok=True)
    # (PeftModel prefixes its base model's names with base_model.model.)
    save_file({f"base_model.model.{k}": v.detach().float().cpu().contiguous()
               for k, v in state.items()}, str(folder / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    cfg = copy.deepcopy(backbone.peft_config["default"])
    cfg.base_model_name_or_path = base_model
    cfg.save_pretrained(str(folder))


def lora_metadata(backbone: nn.Module) -> dict[str, Any] | None:
    """What csekit.json records of the adapters (None without LoRA)."""
    if not has_lora(backbone):
        return None
    c = backbone.peft_config["default"]
    return {"r": c.r, "alpha": c.lora_alpha, "dropout": c.lora_dropout,
            "target_modules": sorted(c.target_modules), "merged": True}


def lora_saving(backbone: nn.Module, source: str, *, adapter: bool
                ) -> tuple[dict[str, Any], Callable[[Path], None] | None]:
    """For saving an encoder: csekit.json's ``lora`` entry (empty without LoRA) and the writer
    of the adapter folder when ``adapter`` is asked for (None otherwise)."""
    meta = lora_metadata(backbone)
    if meta is None:
        if adapter:
            raise ConfigError("lora_adapter: this encoder has no LoRA adapters")
        return {}, None
    meta["adapter"] = ADAPTER_DIR if adapter else None

    def write(folder: Path) -> None:
        save_adapter(backbone, folder / ADAPTER_DIR, source)

    return {"lora": meta}, (write if adapter else None)


__all__ = ["ADAPTER_DIR", "DEFAULT_TARGETS", "LoraSettings", "apply_lora", "has_lora",
           "lora_metadata", "lora_saving", "merged_copy", "save_adapter"]

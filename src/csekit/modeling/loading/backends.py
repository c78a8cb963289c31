"""The two backbones a model folder can load into: a ``transformers`` model (trainable,
savable) or csekit's inference-only native BERT / RoBERTa (:mod:`csekit.modeling.native`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from csekit.errors import ConfigError, ModelLoadError, first_line
from csekit.modeling.hf import quiet_transformers
from csekit.modeling.loading.dropout import set_dropout
from csekit.modeling.loading.strict import check_loading_info

logger = logging.getLogger(__name__)

BACKENDS = ("hf", "native", "auto")
# The config switch transformers offers for bidirectional attention in a decoder (Gemma,
# Gemma 2 / 3: EmbeddingGemma); other decoders have none (docs/backbones.md).
BIDIRECTIONAL_KEY = "use_bidirectional_attention"


def auto_uses_native(device: str | torch.device | None = None) -> bool:
    """Whether ``backend="auto"`` may pick the native backend for ``device``.

    Only on the CPU, where it was measured faster and checked equal to transformers
    (benchmarks/eval_parity.py, eval_speed.py). On CUDA, transformers until
    ``benchmarks/gpu_check.sh`` has shown native equal and faster there.
    """
    if device is None:
        return not torch.cuda.is_available()
    return torch.device(device).type == "cpu"


def load_native(tdir: Path, name: str, *, strict: bool) -> tuple[nn.Module, bool, Any] | None:
    """The native backbone, whether its pooler weights were trained, and its WordPiece
    tokenizer (None where that does not apply).

    Returns None when the model is outside the native encoder and ``strict`` is off.
    """
    from csekit.modeling.native.bert import NativeUnsupported, load_native_encoder
    from csekit.modeling.native.tokenizer import WordPieceTokenizer

    try:
        backbone, pooler_trained = load_native_encoder(tdir)
    except NativeUnsupported as err:
        if strict:
            raise ModelLoadError(f"{name}: the native backend does not cover this model ({err}); "
                                 "use --backend hf") from err
        logger.debug("%s: native backend not used (%s)", name, err)
        return None
    except Exception as err:  # unreadable weights etc.: transformers reports it properly
        if strict:
            raise ModelLoadError(f"cannot load model {name}: {first_line(err)}") from err
        logger.debug("%s: native backend failed (%s); using transformers", name, first_line(err))
        return None
    try:
        tokenizer: Any = WordPieceTokenizer.from_folder(tdir)
    except NativeUnsupported as err:
        logger.debug("%s: native tokenizer not used (%s)", name, err)
        tokenizer = None
    return backbone, pooler_trained, tokenizer


def load_hf_backbone(tdir: Path, name: str, dropout: float | None,
                     trust_remote_code: bool, *,
                     bidirectional: bool = False) -> tuple[nn.Module, bool]:
    """The ``transformers`` backbone in fp32, and whether its pooler weights were trained.

    ``dropout`` sets every dropout knob of the architecture
    (:func:`csekit.modeling.loading.dropout.set_dropout`); ``bidirectional`` switches a
    decoder's attention to bidirectional where its config has the switch (else ConfigError).
    Weights the model class would drop or leave random are an error
    (:func:`csekit.modeling.loading.strict.check_loading_info`).
    """
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(tdir, trust_remote_code=trust_remote_code,
                                            local_files_only=True)
    except Exception as err:
        raise ModelLoadError(f"cannot read the config of {name}: {first_line(err)}") from err
    if bidirectional:
        config = bidirectional_config(config, name)
    config.output_hidden_states = False
    if dropout is not None:
        knobs = set_dropout(config, dropout)
        if not knobs:
            raise ConfigError(f"--dropout {dropout}: {name} ({config.model_type}) has no dropout "
                              "setting in its config that csekit can set")
        logger.info("dropout %s set on %s", dropout, ", ".join(knobs))
    try:
        with quiet_transformers():
            # dtype=float32: fp32 master weights whatever the checkpoint stores (transformers 5
            # loads the stored dtype by default); mixed precision is autocast on top.
            backbone, info = AutoModel.from_pretrained(
                tdir, config=config, use_safetensors=True, trust_remote_code=trust_remote_code,
                local_files_only=True, output_loading_info=True, dtype=torch.float32)
    except Exception as err:
        raise load_error(name, err) from err
    check_loading_info(backbone, info, name)
    pooler_trained = not any(k.startswith("pooler.") for k in info.get("missing_keys", ()))
    return backbone, pooler_trained


def bidirectional_config(config: Any, name: str) -> Any:
    """``config`` with bidirectional attention, rebuilt so its own post-init rules apply (Gemma
    3 halves its sliding window); ConfigError where transformers offers no switch."""
    if not hasattr(config, BIDIRECTIONAL_KEY):
        raise ConfigError(
            f"--bidirectional: transformers has no switch for bidirectional attention in "
            f"{config.model_type} ({name}); it is offered for the models whose config has "
            f"{BIDIRECTIONAL_KEY} (Gemma, Gemma 2, Gemma 3), see docs/backbones.md")
    return type(config).from_dict({**config.to_dict(), BIDIRECTIONAL_KEY: True})


def load_hf_tokenizer(tdir: Path, name: str, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(tdir, trust_remote_code=trust_remote_code,
                                             local_files_only=True)
    except Exception as err:
        raise load_error(name, err) from err


def load_error(name: str, err: Exception) -> ModelLoadError:
    if isinstance(err, ValueError) and "trust_remote_code" in str(err):
        return ModelLoadError(f"{name} needs custom code; pass trust_remote_code=True "
                              "(--trust-remote-code) only if you trust it")
    return ModelLoadError(f"cannot load model {name}: {first_line(err)}")


__all__ = ["BACKENDS", "BIDIRECTIONAL_KEY", "auto_uses_native", "bidirectional_config",
           "load_error", "load_hf_backbone", "load_hf_tokenizer", "load_native"]

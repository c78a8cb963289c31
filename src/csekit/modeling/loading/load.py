"""Everything :meth:`csekit.modeling.encoder.Encoder.from_pretrained` needs, read from a Hugging
Face folder, a csekit / sentence-transformers folder or a hub id: the backbone on the chosen
backend, the tokenizer, the MLP head and the pooling the folder asks for."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from csekit.errors import ConfigError, ModelLoadError, first_line
from csekit.modeling.loading.backends import (
    BACKENDS,
    auto_uses_native,
    load_hf_backbone,
    load_hf_tokenizer,
    load_native,
)
from csekit.modeling.loading.lora import LoraSettings, apply_lora
from csekit.modeling.loading.resolve import check_transformer_dir, resolve_model_dir
from csekit.modeling.representation.last_token import is_causal
from csekit.modeling.representation.pooling import MLP_MODES, POOLERS, PROMPT_POOLERS, MLPHead
from csekit.modeling.representation.prompt import PromptConfig
from csekit.modeling.saved.folder import CSEKIT_META, HEAD_FILE
from csekit.modeling.saved.st_format import read_st_modules

logger = logging.getLogger(__name__)


@dataclass
class EncoderParts:
    """What a folder loads into: the Encoder's constructor arguments, plus where it came from."""

    backbone: nn.Module
    tokenizer: Any
    pooler: str
    mlp: str
    max_seq_len: int | None
    head: MLPHead | None
    normalize: bool
    backbone_pooler_trained: bool
    backend: str
    prompt: PromptConfig | None
    instruction: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def encoder_kwargs(self) -> dict[str, Any]:
        return {"pooler": self.pooler, "mlp": self.mlp, "max_seq_len": self.max_seq_len,
                "head": self.head, "normalize": self.normalize,
                "backbone_pooler_trained": self.backbone_pooler_trained,
                "backend": self.backend, "prompt": self.prompt,
                "instruction": self.instruction}


def check_choices(pooler: str | None, mlp: str | None, backend: str | None = None) -> None:
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if pooler is not None and pooler not in POOLERS:
        raise ConfigError(f"unknown pooler {pooler!r}; choose one of {', '.join(POOLERS)}")
    if mlp is not None and mlp not in MLP_MODES:
        raise ConfigError(f"unknown mlp mode {mlp!r}; choose one of {', '.join(MLP_MODES)}")


def load_encoder_parts(
    name_or_path: str | os.PathLike[str],
    *,
    pooler: str | None = None,
    mlp: str | None = None,
    dropout: float | None = None,
    max_seq_len: int | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    local_files_only: bool | None = None,
    backend: str = "hf",
    device: str | torch.device | None = None,
    prompt: PromptConfig | None = None,
    templates: Sequence[str] | None = None,
    instruction: str | None = None,
    lora: LoraSettings | None = None,
    bidirectional: bool = False,
) -> EncoderParts:
    """What :meth:`csekit.modeling.encoder.Encoder.from_pretrained` loads from a Hugging Face
    folder, a csekit / sentence-transformers folder, or a hub id.

    Pooling defaults to what the folder says (csekit.json, else the ST modules); a plain HF
    model defaults to ``cls`` (its own pooler) when the checkpoint holds trained pooler
    weights, else ``cls_before_pooler``. An explicit ``pooler="cls"`` on a model with a
    saved MLP head uses that head; a causal decoder defaults to ``last`` (``avg`` when its
    tokenizer has no EOS token). Weights load only from safetensors.

    ``backend``: ``hf`` (default) loads a ``transformers`` model, needed to train or save;
    ``native`` loads csekit's inference-only BERT/RoBERTa forward
    (:mod:`csekit.modeling.native.bert`, same numbers, faster start-up and encoding) and
    fails if the model is outside it; ``auto`` uses ``native`` where it applies and where it
    has been measured faster and checked equal, which today is the CPU only
    (:func:`auto_uses_native`; ``device`` is where the encoder will run, default: CUDA when
    available), else ``hf``.

    ``prompt`` / ``templates`` (poolers ``prompt`` / ``prompteol``): the prompt settings,
    else the saved ones (csekit.json), else PromptBERT's (PromptEOL's) defaults;
    ``templates`` replaces just the templates. ``instruction``: text before every sentence
    (default: the saved one; ``""``: none). ``dropout`` sets every dropout knob of the
    architecture (:mod:`csekit.modeling.loading.dropout`); ``lora`` injects LoRA adapters
    (:mod:`csekit.modeling.loading.lora`); ``bidirectional`` switches a decoder's
    attention where transformers offers the switch (docs/backbones.md).
    """
    check_choices(pooler, mlp, backend)
    name = os.fspath(name_or_path)
    root = resolve_model_dir(name, revision=revision, local_files_only=local_files_only)
    meta: dict[str, Any] = {}
    if (root / CSEKIT_META).is_file():
        try:
            meta = json.loads((root / CSEKIT_META).read_text(encoding="utf-8"))
        except ValueError as err:
            raise ModelLoadError(f"{root / CSEKIT_META} is not valid JSON: {err}") from err
    st = read_st_modules(root) if (root / "modules.json").is_file() else None
    tdir = st.transformer_dir if st is not None else root
    check_transformer_dir(tdir, what=name)
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    training_only = dropout is not None or lora is not None or bidirectional
    if backend == "native" and training_only:
        raise ConfigError("dropout, LoRA and bidirectional attention need a transformers model, "
                          "and the native backend is inference-only; use backend='hf'")

    if backend == "auto" and not auto_uses_native(device):
        backend = "hf"
    native = load_native(tdir, name, strict=backend == "native") \
        if backend != "hf" and not training_only else None
    if native is not None:
        backend = "native"
        backbone, pooler_trained, tokenizer = native
    else:
        backend = "hf"
        backbone, pooler_trained = load_hf_backbone(tdir, name, dropout, trust_remote_code,
                                                    bidirectional=bidirectional)
        tokenizer = None
        if lora is not None:
            apply_lora(backbone, lora)
    if tokenizer is None:  # (the native tokenizer covers BERT WordPiece only)
        tokenizer = load_hf_tokenizer(tdir, name, trust_remote_code)

    head_state: dict[str, torch.Tensor] | None = None
    if (root / HEAD_FILE).is_file():
        head_state = load_file(str(root / HEAD_FILE))
    elif st is not None and st.head_state is not None and not meta:
        head_state = st.head_state

    saved_pooler = meta.get("pooler")
    saved_mlp = meta.get("mlp")
    if saved_pooler is None and st is not None:
        saved_pooler = "cls" if (st.head_state is not None and st.pooler == "cls_before_pooler") \
            else st.pooler
        saved_mlp = "always" if st.head_state is not None else "none"
    if pooler is None:
        if saved_pooler is not None:
            pooler = saved_pooler
        elif is_causal(backbone):  # a decoder LLM: its last token (with EOS) has read it all
            pooler = "last" if getattr(tokenizer, "eos_token", None) else "avg"
            logger.info("%s is a causal decoder: using --pooler %s", name, pooler)
        else:
            # (a native model without pooler weights has no pooler layer at all)
            has_pooler = getattr(backbone, "pooler", None) is not None or not pooler_trained
            pooler = "cls" if (has_pooler and pooler_trained) else "cls_before_pooler"
            if pooler == "cls_before_pooler" and has_pooler:
                logger.warning("%s has no trained pooler weights: using cls_before_pooler", name)
        if mlp is None:
            mlp = saved_mlp or "none"
    elif mlp is None:
        # An explicit ``cls`` uses the saved head; other poolers keep it for training only.
        if head_state is not None:
            mlp = "always" if pooler == "cls" else "train"
        else:
            mlp = "none"
    if mlp != "none" and head_state is None and saved_mlp not in (None, "none") and meta:
        raise ModelLoadError(f"{root}: csekit.json says mlp={saved_mlp!r} but {HEAD_FILE} is missing")
    if mlp == "none":
        head_state = None

    head: MLPHead | None = None
    if head_state is not None:
        head = MLPHead(int(backbone.config.hidden_size))
        try:
            head.load_state_dict(head_state)
        except RuntimeError as err:
            raise ModelLoadError(f"{root}: MLP head does not fit the model: {first_line(err)}") from err
    seq_len = max_seq_len or meta.get("max_seq_len") or (st.max_seq_len if st else None)
    normalize = bool(meta.get("normalize", st.normalize if st is not None else False))
    prompt_cfg: PromptConfig | None = None
    if pooler in PROMPT_POOLERS:
        saved_prompt = meta.get("prompt") if saved_pooler == pooler else None
        prompt_cfg = prompt or PromptConfig.from_dict(
            {**(saved_prompt or {}), "last_token": pooler == "prompteol"})
        if templates is not None:
            prompt_cfg = dataclasses.replace(prompt_cfg, templates=tuple(templates))
    elif prompt is not None or templates:
        raise ConfigError("prompt templates / settings need --pooler prompt or prompteol")
    if instruction is None:
        instruction = meta.get("instruction") if meta else (st.instruction if st else None)
    return EncoderParts(backbone, tokenizer, pooler=pooler, mlp=mlp, max_seq_len=seq_len,
                        head=head, normalize=normalize, backbone_pooler_trained=pooler_trained,
                        backend=backend, prompt=prompt_cfg, instruction=instruction or None,
                        metadata=meta, source=name)


__all__ = ["EncoderParts", "check_choices", "load_encoder_parts"]

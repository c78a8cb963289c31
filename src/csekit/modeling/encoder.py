"""The sentence encoder: a Hugging Face backbone + pooling + an optional train-only MLP head.

``Encoder.forward`` is what training calls (train mode: pooled, then the MLP head when ``mlp`` is
``train`` or ``always``); ``Encoder.encode`` is fast batched inference for evaluation. Loading
(:mod:`csekit.modeling.loading`), the saved folder (:mod:`csekit.modeling.saved`) and the speed
paths (:mod:`csekit.modeling.speed`, :mod:`csekit.modeling.native`) live in their own rooms;
``from_pretrained`` and ``save`` hand over to them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from csekit.errors import ConfigError
from csekit.modeling.hf import forward_accepts, model_max_len
from csekit.modeling.loading.backends import BACKENDS, auto_uses_native
from csekit.modeling.loading.load import check_choices, load_encoder_parts
from csekit.modeling.loading.lora import LoraSettings, has_lora, lora_saving, merged_copy
from csekit.modeling.native.cpu_fastpath import fastpath_enabled, fused_cpu_linears
from csekit.modeling.representation.instruction import encoder_tokenizer
from csekit.modeling.representation.last_token import check_pooler_fits_architecture
from csekit.modeling.representation.pooling import (
    HIDDEN_STATE_POOLERS,
    MLPHead,
    check_pooler_fits,
    pool_tokens,
)
from csekit.modeling.representation.prompt import PromptConfig, prompt_pooling
from csekit.modeling.saved.folder import HEAD_FILE, prompt_metadata, write_encoder_folder
from csekit.modeling.speed.batching import (
    check_sentences,
    plan_batches,
    run_batches,
    token_ids_for_encode,
    unique_sentences,
)
from csekit.modeling.speed.spare_pooler import SparePooler
from csekit.modeling.speed.subbatch import forward_length_subbatched, part_cost_for_width
from csekit.modeling.speed.train_forward import lean_last_hidden, lean_unsupported
from csekit.precision import autocast_context


class Encoder(nn.Module):
    """HF backbone + pooler + optional MLP head.

    Args:
        backbone: a ``transformers`` AutoModel (BERT, RoBERTa, ModernBERT, a decoder LLM, ...).
        tokenizer: its tokenizer.
        pooler: cls | cls_before_pooler | avg | avg_first_last | avg_top2 | last | prompt |
            prompteol (see :mod:`csekit.modeling.representation`).
        mlp: ``train`` (SimCSE ``mlp_only_train``: head in train mode only), ``always`` or
            ``none``. With ``pooler="cls"`` and ``mlp="none"`` the backbone's own pooler is used.
        max_seq_len: default truncation length of ``encode``.
        head: an existing MLP head (else a fresh one when ``mlp`` is not ``none``).
        normalize: whether ``encode`` L2-normalises by default.
        backend: ``hf`` (a ``transformers`` model: trainable, savable) or ``native``
            (:mod:`csekit.modeling.native.bert`, inference only); set by ``from_pretrained``.
        prompt: the prompt pooler's settings (pooler ``prompt`` / ``prompteol``).
        instruction: text put before every sentence
            (:mod:`csekit.modeling.representation.instruction`).
    """

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: Any,
        *,
        pooler: str = "cls",
        mlp: str = "train",
        max_seq_len: int | None = None,
        head: MLPHead | None = None,
        normalize: bool = False,
        backbone_pooler_trained: bool = True,
        backend: str = "hf",
        prompt: PromptConfig | None = None,
        instruction: str | None = None,
    ) -> None:
        super().__init__()
        if backend not in ("hf", "native"):
            raise ConfigError(f"unknown backend {backend!r}; choose hf or native")
        check_choices(pooler, mlp)
        check_pooler_fits_architecture(pooler, backbone)
        self.backend = backend
        self.backbone = backbone
        # (EOS appended for ``last``; the instruction in front of every text)
        self.tokenizer = encoder_tokenizer(tokenizer, pooler=pooler, instruction=instruction)
        self.pooler = pooler
        self.mlp = mlp
        self.normalize = normalize
        self.metadata: dict[str, Any] = {}
        self.source = ""
        hidden = int(backbone.config.hidden_size)
        self.head: MLPHead | None = head if head is not None else (
            MLPHead(hidden) if mlp != "none" else None)
        check_pooler_fits(pooler, self.head, backbone, backbone_pooler_trained)
        self.max_seq_len = int(max_seq_len) if max_seq_len else \
            model_max_len(tokenizer, backbone.config)
        # Train-mode forward in up to this many length-sorted sub-batches (Trainer-set)
        self.length_subbatches = 1
        self.subbatch_part_cost = part_cost_for_width(hidden)  # tokens per extra sub-batch
        # Train-mode forward through csekit.modeling.speed.train_forward where it covers the
        # backbone (Trainer-set); lean_reason: why it cannot (None: it can).
        self.lean_forward = False
        self.lean_reason: str | None = lean_unsupported(backbone) if backend == "hf" else \
            "the native inference backend"
        # The backbone's own pooler, held out of the module tree when no forward uses it.
        self._spare_pooler = SparePooler()
        if backend == "hf" and not (pooler == "cls" and self.head is None):
            self._spare_pooler.detach(backbone)
        self.prompt = prompt_pooling(pooler, prompt, tokenizer, backbone.config)
        self._takes_token_types = forward_accepts(backbone, "token_type_ids")

    # ------------------------------------------------------------------ properties
    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def runs_lean_forward(self) -> bool:
        """Whether train-mode forwards run :func:`lean_last_hidden` (else transformers'): when
        ``lean_forward`` is set, it covers the backbone, the pooler reads only the last layer
        and there is no prompt pooler."""
        return (self.lean_forward and self.lean_reason is None
                and self.pooler not in HIDDEN_STATE_POOLERS and self.prompt is None)

    @property
    def lean_cls_only(self) -> bool:
        """Whether the lean forward's last layer computes position 0 alone ([CLS] pooling)."""
        return self.runs_lean_forward and self.pooler in ("cls", "cls_before_pooler")

    @property
    def eval_pooler(self) -> str:
        """The pooling that evaluation (eval mode) applies, as SimCSE's evaluation names it."""
        if self.pooler == "cls" and self.mlp == "train":
            return "cls_before_pooler"
        return self.pooler

    @property
    def uses_head_at_eval(self) -> bool:
        """Whether eval-mode embeddings go through a Linear+Tanh head (csekit's or the backbone's)."""
        return self.mlp == "always" or (self.pooler == "cls" and self.mlp == "none")

    # ------------------------------------------------------------------ forward
    def tokenize(self, sentences: list[str], max_seq_len: int | None = None) -> dict[str, torch.Tensor]:
        """Tokenise with padding to the longest sentence and truncation. Prompt poolers: each
        sentence in T1 with the evaluation rules, ``max_seq_len`` counting sentence tokens.

        Shape: -> input_ids, attention_mask[, token_type_ids] each (B, L) [, prompt_template (B,)].
        """
        if self.prompt is not None:
            return self.prompt.batch(list(sentences), max_seq_len, templates=[0] * len(sentences),
                                     period=self.prompt.config.eval_period)
        return dict(self.tokenizer(list(sentences), padding=True, truncation=True,
                                   max_length=max_seq_len or self.max_seq_len, return_tensors="pt"))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        prompt_template: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sentence embeddings.

        Train mode: pooled [+ MLP head when ``mlp`` is train/always]. Eval mode: the evaluation
        pooling (``eval_pooler``) [+ head when ``mlp`` is always, or the backbone pooler for
        ``cls`` without a csekit head].

        In train mode with ``length_subbatches`` > 1 the rows run as up to that many
        length-sorted sub-batches (:mod:`csekit.modeling.speed.subbatch`; the same maths, less
        padding), except with a prompt pooler. ``prompt_template`` (B,): each row's template
        index for the prompt poolers (None: T1).

        Shape: input_ids, attention_mask, token_type_ids (B, L) -> (B, H).
        """
        if self.training and self.length_subbatches > 1 and self.prompt is None:
            return forward_length_subbatched(self._forward_rows, input_ids, attention_mask,
                                             token_type_ids, max_parts=self.length_subbatches,
                                             part_cost_tokens=self.subbatch_part_cost)
        return self._forward_rows(input_ids, attention_mask, token_type_ids,
                                  prompt_template=prompt_template)

    def _forward_rows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      token_type_ids: torch.Tensor | None = None, *,
                      padded: bool = True,
                      prompt_template: torch.Tensor | None = None) -> torch.Tensor:
        """``forward`` on one padded batch; ``padded=False``: no row is padded (no mask needed).

        Shape: (B, L) each -> (B, H).
        """
        need_hidden = self.pooler in HIDDEN_STATE_POOLERS
        # Without padding the backbone needs no mask (transformers drops an all-ones mask
        # itself, after a check of every entry; this skips the check).
        kwargs: dict[str, Any] = {"input_ids": input_ids,
                                  "attention_mask": attention_mask if padded else None}
        if token_type_ids is not None and self._takes_token_types:
            kwargs["token_type_ids"] = token_type_ids
        backbone_pooler = self.pooler == "cls" and self.head is None
        if backbone_pooler:
            self._spare_pooler.attach(self.backbone)
        hidden_states = None
        if self.training and self.runs_lean_forward:
            last = lean_last_hidden(self.backbone, input_ids, kwargs["attention_mask"],
                                    kwargs.get("token_type_ids"), cls_only=self.lean_cls_only)
            if backbone_pooler:
                return self.backbone.pooler(last)  # BERT's pooler reads position 0 only
        else:
            out = self.backbone(**kwargs, output_hidden_states=need_hidden, return_dict=True)
            if backbone_pooler:
                return out.pooler_output
            last = out.last_hidden_state
            hidden_states = out.hidden_states if need_hidden else None
        if self.prompt is not None:
            pooled = self.prompt.pool_with(self.backbone, last, attention_mask,
                                           prompt_template, training=self.training)
        else:
            pooled = pool_tokens(self.pooler, last, attention_mask, hidden_states)
        if self.head is not None and (self.mlp == "always" or (self.mlp == "train" and self.training)):
            pooled = self.head(pooled)
        return pooled

    # ------------------------------------------------------------------ encode
    def encode(
        self,
        sentences: Sequence[str] | Iterable[str],
        *,
        batch_size: int = 128,
        max_seq_len: int | None = None,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        normalize: bool | None = None,
        show_progress: bool = False,
        max_tokens: int | None = None,
        stable_shapes: bool = False,
    ) -> torch.Tensor:
        """Embed sentences (eval mode, no gradients) and return them in input order.

        Each unique sentence is tokenised and encoded once; sentences are sorted by token
        length so batches carry (almost) no padding, and a batch holds at most ``batch_size``
        sentences, ``max_tokens`` padded tokens (default ``batch_size * 32``) and 10% padding.
        ``stable_shapes`` takes batch row counts from a small fixed set (see
        :func:`~csekit.modeling.speed.batching.plan_batches`): for callers that encode many
        chunks in one process, so that per-shape kernel state stops growing.

        Shape: N sentences -> (N, H) float32 on the CPU.
        """
        sentences = check_sentences(sentences)
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        max_seq_len = max_seq_len or self.max_seq_len
        if max_seq_len < 2:
            raise ConfigError(f"max sequence length must be >= 2, got {max_seq_len}")
        normalize = self.normalize if normalize is None else normalize
        dev = torch.device(device) if device is not None else self.device
        ctx = autocast_context(dev, precision)
        if dev != self.device:
            self.to(dev)

        unique, inverse = unique_sentences(sentences)
        if not unique:
            return torch.empty(0, self.hidden_size, dtype=torch.float32)
        tok = self.tokenizer
        ids_list, tt_list = token_ids_for_encode(tok, self.prompt, unique, max_seq_len)
        lengths = np.fromiter(map(len, ids_list), dtype=np.int64, count=len(unique))
        budget = max_tokens if max_tokens is not None else batch_size * 32
        batches = plan_batches(lengths, batch_size, max(budget, 1), stable_shapes=stable_shapes)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

        out = torch.empty(len(unique), self.hidden_size, dtype=torch.float32)
        was_training = self.training
        self.eval()
        # (the native backend fuses its own linear layers; this patches a transformers model's)
        use_fast = (dev.type == "cpu" and precision == "fp32" and self.backend == "hf"
                    and fastpath_enabled())
        fast = fused_cpu_linears(self.backbone) if use_fast else contextlib.nullcontext()
        try:
            with torch.inference_mode(), ctx, fast:
                run_batches(self, ids_list, tt_list, lengths, batches, pad_id, out, dev,
                            show_progress=show_progress)
        finally:
            self.train(was_training)
        if normalize:
            out = F.normalize(out, dim=-1)
        return out[torch.from_numpy(inverse)]

    # ------------------------------------------------------------------ save / load
    def prompt_metadata(self) -> dict[str, Any]:
        """The prompt settings with the templates resolved (what csekit.json stores)."""
        assert self.prompt is not None
        return prompt_metadata(self.prompt)

    @contextlib.contextmanager
    def backbone_for_saving(self) -> Iterator[nn.Module]:
        """The backbone with every weight of its checkpoint in place (the spare pooler too),
        LoRA adapters merged into a copy (:func:`~csekit.modeling.loading.lora.merged_copy`)."""
        with self._spare_pooler.for_saving(self.backbone) as backbone:
            yield merged_copy(backbone) if has_lora(backbone) else backbone

    def save(self, path: str | os.PathLike[str], *, metadata: dict[str, Any] | None = None,
             lora_adapter: bool = False) -> None:
        """Atomically write a sentence-transformers folder (+ csekit.json, + the MLP head); see
        :func:`csekit.modeling.saved.folder.write_encoder_folder`. With LoRA the weights are
        the merged ones; ``lora_adapter`` also writes the adapter into ``lora_adapter/``."""
        if self.backend != "hf":
            raise ConfigError("this encoder was loaded with the inference-only native backend; "
                              "load it with backend='hf' to train or save it")
        lora, extra = lora_saving(self.backbone, self.source, adapter=lora_adapter)
        write_encoder_folder(self, path, {**lora, **(metadata or {})}, extra=extra)

    @classmethod
    def from_pretrained(
        cls,
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
    ) -> Encoder:
        """Load a Hugging Face folder, a csekit / sentence-transformers folder, or a hub id; the
        options are those of :func:`csekit.modeling.loading.load.load_encoder_parts`."""
        parts = load_encoder_parts(
            name_or_path, pooler=pooler, mlp=mlp, dropout=dropout, max_seq_len=max_seq_len,
            trust_remote_code=trust_remote_code, revision=revision,
            local_files_only=local_files_only, backend=backend, device=device, prompt=prompt,
            templates=templates, instruction=instruction, lora=lora, bidirectional=bidirectional)
        enc = cls(parts.backbone, parts.tokenizer, **parts.encoder_kwargs())
        enc.metadata = parts.metadata
        enc.source = parts.source
        enc.eval()
        return enc


__all__ = ["BACKENDS", "HEAD_FILE", "Encoder", "auto_uses_native"]

"""The sentence encoder: a Hugging Face backbone + pooling + an optional train-only MLP head.

``Encoder.forward`` is what training calls (train mode: pooled, then the MLP head when ``mlp`` is
``train`` or ``always``); ``Encoder.encode`` is fast batched inference for evaluation; ``save``
writes an atomic sentence-transformers folder that ``SentenceTransformer(path)`` loads and that
gives the same embeddings as ``encode``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from csekit.atomic import atomic_dir
from csekit.errors import ConfigError, ModelLoadError, first_line
from csekit.modeling.cpu_fastpath import fastpath_enabled, fused_cpu_linears
from csekit.modeling.fast_encode import pad_batch, plan_batches, progress_bar
from csekit.modeling.model_card import CARD_FILE, build_model_card
from csekit.modeling.pooling import HIDDEN_STATE_POOLERS, MLP_MODES, POOLERS, MLPHead, pool_tokens
from csekit.modeling.prompt import PromptConfig, PromptPooling
from csekit.modeling.resolve import check_transformer_dir, resolve_model_dir
from csekit.modeling.st_format import read_st_modules, write_st_modules
from csekit.modeling.subbatch import forward_length_subbatched, part_cost_for_width
from csekit.modeling.train_forward import lean_last_hidden, lean_unsupported
from csekit.precision import autocast_context

logger = logging.getLogger(__name__)

CSEKIT_META = "csekit.json"
HEAD_FILE = "csekit_head.safetensors"
FORMAT_VERSION = 1
BACKENDS = ("hf", "native", "auto")
_DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout",
                 "attention_dropout", "hidden_dropout", "attention_probs_dropout")


def library_versions() -> dict[str, str]:
    """Versions of the libraries a saved model depends on."""
    import transformers

    from csekit import __version__

    out = {"csekit": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import sentence_transformers

        out["sentence_transformers"] = sentence_transformers.__version__
    except ImportError:
        pass
    return out


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No weight-loading progress bar / load report (csekit logs what matters itself)."""
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


class Encoder(nn.Module):
    """HF backbone + pooler + optional MLP head.

    Args:
        backbone: a ``transformers`` AutoModel (BERT, RoBERTa, ...).
        tokenizer: its tokenizer.
        pooler: cls | cls_before_pooler | avg | avg_first_last | avg_top2 (see
            :mod:`csekit.modeling.pooling`).
        mlp: ``train`` (SimCSE ``mlp_only_train``: head in train mode only), ``always`` or
            ``none``. With ``pooler="cls"`` and ``mlp="none"`` the backbone's own pooler is used.
        max_seq_len: default truncation length of ``encode``.
        head: an existing MLP head (else a fresh one when ``mlp`` is not ``none``).
        normalize: whether ``encode`` L2-normalises by default.
        backend: ``hf`` (a ``transformers`` model: trainable, savable) or ``native``
            (:mod:`csekit.modeling.native_bert`, inference only); set by ``from_pretrained``.
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
    ) -> None:
        super().__init__()
        if backend not in ("hf", "native"):
            raise ConfigError(f"unknown backend {backend!r}; choose hf or native")
        self.backend = backend
        if pooler not in POOLERS:
            raise ConfigError(f"unknown pooler {pooler!r}; choose one of {', '.join(POOLERS)}")
        if mlp not in MLP_MODES:
            raise ConfigError(f"unknown mlp mode {mlp!r}; choose one of {', '.join(MLP_MODES)}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooler = pooler
        self.mlp = mlp
        self.normalize = normalize
        hidden = int(backbone.config.hidden_size)
        self.head: MLPHead | None = head if head is not None else (
            MLPHead(hidden) if mlp != "none" else None)
        if pooler == "cls" and self.head is None:
            if not backbone_pooler_trained:
                raise ConfigError(
                    "pooler 'cls' would use the backbone's pooler, whose weights are not in the "
                    "checkpoint (randomly initialised); use --pooler cls_before_pooler")
            if getattr(backbone, "pooler", None) is None:
                raise ConfigError(
                    f"pooler 'cls' needs a pooler layer, and {type(backbone).__name__} has none; "
                    "use --pooler cls_before_pooler or an MLP head")
        if pooler in HIDDEN_STATE_POOLERS and int(backbone.config.num_hidden_layers) < 2:
            raise ConfigError(f"pooler {pooler!r} needs a backbone with at least 2 layers")
        self.max_seq_len = int(max_seq_len) if max_seq_len else self._model_max_len()
        # Train-mode forward in up to this many length-sorted sub-batches (1: one batch); the
        # Trainer sets it from TrainConfig.length_subbatches.
        self.length_subbatches = 1
        self.subbatch_part_cost = part_cost_for_width(hidden)  # tokens per extra sub-batch
        # Train-mode forward through csekit.modeling.train_forward (stacked QKV, no dead work
        # in the last layer for [CLS] pooling) where it covers the backbone; the Trainer sets
        # it from TrainConfig.lean_forward. lean_reason: why it cannot (None: it can).
        self.lean_forward = False
        self.lean_reason: str | None = lean_unsupported(backbone) if backend == "hf" else \
            "the native inference backend"
        # The backbone's own pooler (BERT's Linear+Tanh) when no forward uses it: kept out of
        # the module tree (not run, not a parameter, so no unused parameter under DDP) and put
        # back for saving, so a saved folder keeps the checkpoint's pooler weights.
        self._spare_pooler: tuple[nn.Module, ...] = ()
        if backend == "hf" and not (pooler == "cls" and self.head is None):
            self._detach_backbone_pooler()
        # --- prompt pooler (PromptBERT templates and denoising: csekit.modeling.prompt)
        self.prompt: PromptPooling | None = None
        if pooler == "prompt":
            cfg = backbone.config
            self.prompt = PromptPooling(
                prompt or PromptConfig(), tokenizer, model_type=getattr(cfg, "model_type", None),
                pad_token_id=getattr(cfg, "pad_token_id", None),
                max_positions=int(getattr(cfg, "max_position_embeddings", 0) or 512))
        elif prompt is not None and prompt != PromptConfig():
            raise ConfigError("prompt templates / settings need --pooler prompt")
        try:
            params = inspect.signature(backbone.forward).parameters
            self._takes_token_types = "token_type_ids" in params or any(
                p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        except (TypeError, ValueError):  # pragma: no cover - exotic forward
            self._takes_token_types = True

    # ------------------------------------------------------------------ properties
    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def runs_lean_forward(self) -> bool:
        """Whether train-mode forwards run :func:`lean_last_hidden` (else transformers').

        On when ``lean_forward`` is set and it covers the backbone, the pooler reads only the
        last layer (not ``avg_first_last`` / ``avg_top2``) and there is no prompt pooler.
        """
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

    def _detach_backbone_pooler(self) -> None:
        bp = getattr(self.backbone, "pooler", None)
        if not isinstance(bp, nn.Module):
            return
        try:  # models built with add_pooling_layer=False run without one (BERT, RoBERTa, ...)
            optional = "add_pooling_layer" in inspect.signature(type(self.backbone).__init__).parameters
        except (TypeError, ValueError):  # pragma: no cover - exotic model class
            optional = False
        if optional:
            self._spare_pooler = (bp,)
            self.backbone.pooler = None

    def _attach_backbone_pooler(self) -> None:
        if self._spare_pooler and getattr(self.backbone, "pooler", None) is None:
            p = next(self.backbone.parameters())
            self.backbone.pooler = self._spare_pooler[0].to(device=p.device, dtype=p.dtype)
            self._spare_pooler = ()

    @contextlib.contextmanager
    def _pooler_for_saving(self) -> Iterator[None]:
        """The backbone with its pooler weights in place (if they were detached)."""
        if not self._spare_pooler:
            yield
            return
        self.backbone.pooler = self._spare_pooler[0]
        try:
            yield
        finally:
            self.backbone.pooler = None

    def _model_max_len(self) -> int:
        tok_max = int(getattr(self.tokenizer, "model_max_length", 0) or 0)
        pos_max = int(getattr(self.backbone.config, "max_position_embeddings", 0) or 0)
        candidates = [v for v in (tok_max, pos_max) if 0 < v < 100_000]
        return min(candidates) if candidates else 512

    # ------------------------------------------------------------------ forward
    def tokenize(self, sentences: list[str], max_seq_len: int | None = None) -> dict[str, torch.Tensor]:
        """Tokenise with padding to the longest sentence and truncation.

        Shape: -> input_ids, attention_mask[, token_type_ids] each (B, L).
        With the prompt pooler: input_ids, attention_mask (B, L), prompt_template (B,), each
        sentence in T1 with the evaluation rules, ``max_seq_len`` counting sentence tokens.
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
        length-sorted sub-batches, each padded to its own longest row, and come back in input
        order (:mod:`csekit.modeling.subbatch`; the same maths, less padding). The prompt
        pooler always runs one batch (its template-only rows are built per batch).

        ``prompt_template`` (B,): each row's template index for the prompt pooler (None: T1).

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
            self._attach_backbone_pooler()
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
            pooled = self._prompt_pool(last, attention_mask, prompt_template)
        else:
            pooled = pool_tokens(self.pooler, last, attention_mask, hidden_states)
        if self.head is not None and (self.mlp == "always" or (self.mlp == "train" and self.training)):
            pooled = self.head(pooled)
        return pooled

    def _prompt_pool(self, last_hidden: torch.Tensor, attention_mask: torch.Tensor,
                     prompt_template: torch.Tensor | None) -> torch.Tensor:
        """Mask-token states [- template states]; see :mod:`csekit.modeling.prompt`."""
        assert self.prompt is not None
        cfg = self.prompt.config

        def run(ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            return self.backbone(input_ids=ids, attention_mask=mask, position_ids=positions,
                                 return_dict=True).last_hidden_state

        denoise = cfg.denoise if self.training else cfg.eval_denoise
        return self.prompt.pool(last_hidden, attention_mask, prompt_template, denoise=denoise,
                                run=run, grad=cfg.denoise_grad)

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
        :func:`~csekit.modeling.fast_encode.plan_batches`): for callers that encode many
        chunks in one process, so that per-shape kernel state stops growing.

        Shape: N sentences -> (N, H) float32 on the CPU.
        """
        if isinstance(sentences, str):
            raise ConfigError("encode() takes a list of sentences, not a single string")
        sentences = list(sentences)
        for i, s in enumerate(sentences):
            if not isinstance(s, str):
                raise ConfigError(f"sentence {i} is a {type(s).__name__}, not a str")
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

        index: dict[str, int] = {}
        inverse = np.fromiter((index.setdefault(s, len(index)) for s in sentences),
                              dtype=np.int64, count=len(sentences))
        unique = list(index)
        if not unique:
            return torch.empty(0, self.hidden_size, dtype=torch.float32)

        tok = self.tokenizer
        want_tt = "token_type_ids" in getattr(tok, "model_input_names", ())
        if self.prompt is not None:  # T1, evaluation rules; max_seq_len = sentence tokens
            ids_list: list[list[int]] = self.prompt.encode_ids(
                unique, max_seq_len, template=0, period=self.prompt.config.eval_period)
            tt_list: list[list[int]] | None = None
        else:
            encoded = tok(unique, truncation=True, max_length=max_seq_len, padding=False,
                          return_attention_mask=False, return_token_type_ids=want_tt)
            ids_list = encoded["input_ids"]
            tt_list = encoded.get("token_type_ids") if want_tt else None
        if tt_list is not None and not any(any(t) for t in tt_list):
            tt_list = None  # all zeros: the backbone's default, no need to build and pass them
        lengths = np.fromiter(map(len, ids_list), dtype=np.int64, count=len(unique))
        budget = max_tokens if max_tokens is not None else batch_size * 32
        batches = plan_batches(lengths, batch_size, max(budget, 1), stable_shapes=stable_shapes)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

        out = torch.empty(len(unique), self.hidden_size, dtype=torch.float32)
        was_training = self.training
        self.eval()
        bar = progress_bar(len(unique), show_progress)
        # (the native backend fuses its own linear layers; this patches a transformers model's)
        use_fast = (dev.type == "cpu" and precision == "fp32" and self.backend == "hf"
                    and fastpath_enabled())
        fast = fused_cpu_linears(self.backbone) if use_fast else contextlib.nullcontext()
        try:
            with torch.inference_mode(), ctx, fast:
                for idx in batches:
                    width = int(lengths[idx[0]])
                    ids, mask = pad_batch([ids_list[j] for j in idx], width, pad_id)
                    tts = None
                    if tt_list is not None:
                        tts, _ = pad_batch([tt_list[j] for j in idx], width, 0)
                    emb = self(torch.from_numpy(ids).to(dev), torch.from_numpy(mask).to(dev),
                               torch.from_numpy(tts).to(dev) if tts is not None else None)
                    out[torch.from_numpy(idx)] = emb.float().cpu()
                    if bar is not None:
                        bar.update(len(idx))
        finally:
            if bar is not None:
                bar.close()
            self.train(was_training)
        if normalize:
            out = F.normalize(out, dim=-1)
        return out[torch.from_numpy(inverse)]

    # ------------------------------------------------------------------ save / load
    def prompt_metadata(self) -> dict[str, Any]:
        """The prompt settings with the templates resolved (what csekit.json stores)."""
        assert self.prompt is not None
        return {**self.prompt.config.to_dict(), "templates": list(self.prompt.templates)}

    def save(self, path: str | os.PathLike[str], *, metadata: dict[str, Any] | None = None) -> None:
        """Atomically write a sentence-transformers folder (+ csekit.json, + the MLP head).

        ``metadata`` (training config, objective, evaluation results, ...) is stored in
        ``csekit.json`` next to the pooling description and library versions.
        """
        if self.backend != "hf":
            raise ConfigError("this encoder was loaded with the inference-only native backend; "
                              "load it with backend='hf' to train or save it")
        versions = library_versions()
        backbone = self.backbone
        with atomic_dir(path) as tmp, _quiet_transformers():
            with self._pooler_for_saving():
                backbone.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            head_state: dict[str, torch.Tensor] | None = None
            if self.head is not None:
                head_state = {k: v.detach().float().cpu().contiguous()
                              for k, v in self.head.state_dict().items()}
                save_file(head_state, str(tmp / HEAD_FILE))
            eval_head: dict[str, torch.Tensor] | None = None
            if self.uses_head_at_eval:
                if self.head is not None:
                    eval_head = head_state
                else:  # raw backbone pooler (e.g. BERT's) used by ``cls``
                    dense = backbone.pooler.dense
                    eval_head = {"dense.weight": dense.weight, "dense.bias": dense.bias}
            write_st_modules(
                tmp, eval_pooler="cls_before_pooler" if self.eval_pooler == "cls" else self.eval_pooler,
                hidden_size=self.hidden_size,
                num_layers=int(backbone.config.num_hidden_layers), max_seq_len=self.max_seq_len,
                head_state=eval_head, versions=versions, normalize=self.normalize,
                prompt=self.prompt.st_config(self.max_seq_len) if self.prompt is not None else None)
            meta = {
                "format_version": FORMAT_VERSION,
                "pooler": self.pooler,
                "mlp": self.mlp,
                "eval_pooler": self.eval_pooler,
                "head_at_eval": self.uses_head_at_eval,
                "max_seq_len": self.max_seq_len,
                "normalize": self.normalize,
                "versions": versions,
                **({"prompt": self.prompt_metadata()} if self.prompt is not None else {}),
                **(metadata or {}),
            }
            (tmp / CSEKIT_META).write_text(json.dumps(meta, indent=2, default=str) + "\n",
                                           encoding="utf-8")
            # (issue 16) the model card, from the same metadata
            (tmp / CARD_FILE).write_text(build_model_card(json.loads(json.dumps(meta, default=str))),
                                         encoding="utf-8")
        logger.info("saved encoder to %s", path)

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
    ) -> Encoder:
        """Load a Hugging Face folder, a csekit / sentence-transformers folder, or a hub id.

        Pooling defaults to what the folder says (csekit.json, else the ST modules); a plain HF
        model defaults to ``cls`` (its own pooler) when the checkpoint holds trained pooler
        weights, else ``cls_before_pooler``. An explicit ``pooler="cls"`` on a model with a
        saved MLP head uses that head. Weights load only from safetensors.

        ``backend``: ``hf`` (default) loads a ``transformers`` model, needed to train or save;
        ``native`` loads csekit's inference-only BERT/RoBERTa forward
        (:mod:`csekit.modeling.native_bert`, same numbers, faster start-up and encoding) and
        fails if the model is outside it; ``auto`` uses ``native`` where it applies and where it
        has been measured faster and checked equal, which today is the CPU only
        (:func:`auto_uses_native`; ``device`` is where the encoder will run, default: CUDA when
        available), else ``hf``.

        ``prompt`` / ``templates`` (pooler ``prompt``): the prompt settings, else the saved ones
        (csekit.json), else PromptBERT's defaults; ``templates`` replaces just the templates.
        """
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if pooler is not None and pooler not in POOLERS:
            raise ConfigError(f"unknown pooler {pooler!r}; choose one of {', '.join(POOLERS)}")
        if mlp is not None and mlp not in MLP_MODES:
            raise ConfigError(f"unknown mlp mode {mlp!r}; choose one of {', '.join(MLP_MODES)}")
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
        if backend == "native" and dropout is not None:
            raise ConfigError("dropout only matters for training, and the native backend is "
                              "inference-only; use backend='hf'")

        if backend == "auto" and not auto_uses_native(device):
            backend = "hf"
        native = _load_native(tdir, name, strict=backend == "native") \
            if backend != "hf" and dropout is None else None
        if native is not None:
            backend = "native"
            backbone, pooler_trained, tokenizer = native
        else:
            backend = "hf"
            backbone, pooler_trained = _load_hf_backbone(tdir, name, dropout, trust_remote_code)
            tokenizer = None
        if tokenizer is None:  # (the native tokenizer covers BERT WordPiece only)
            tokenizer = _load_hf_tokenizer(tdir, name, trust_remote_code)
        config: Any = backbone.config

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
            head = MLPHead(int(config.hidden_size))
            try:
                head.load_state_dict(head_state)
            except RuntimeError as err:
                raise ModelLoadError(f"{root}: MLP head does not fit the model: {first_line(err)}") from err
        seq_len = max_seq_len or meta.get("max_seq_len") or (st.max_seq_len if st else None)
        normalize = bool(meta.get("normalize", st.normalize if st is not None else False))
        prompt_cfg: PromptConfig | None = None
        if pooler == "prompt":
            saved_prompt = meta.get("prompt") if saved_pooler == "prompt" else None
            prompt_cfg = prompt or PromptConfig.from_dict(saved_prompt)
            if templates is not None:
                prompt_cfg = dataclasses.replace(prompt_cfg, templates=tuple(templates))
        elif prompt is not None or templates:
            raise ConfigError("prompt templates / settings need --pooler prompt")
        enc = cls(backbone, tokenizer, pooler=pooler, mlp=mlp, max_seq_len=seq_len, head=head,
                  normalize=normalize, backbone_pooler_trained=pooler_trained, backend=backend,
                  prompt=prompt_cfg)
        enc.metadata = meta  # type: ignore[attr-defined]
        enc.source = name  # type: ignore[attr-defined]
        enc.eval()
        return enc


def auto_uses_native(device: str | torch.device | None = None) -> bool:
    """Whether ``backend="auto"`` may pick the native backend for ``device``.

    Only on the CPU, where it was measured faster and checked equal to transformers
    (benchmarks/eval_parity.py, eval_speed.py). On CUDA, transformers until
    ``benchmarks/gpu_check.sh`` has shown native equal and faster there.
    """
    if device is None:
        return not torch.cuda.is_available()
    return torch.device(device).type == "cpu"


def _load_native(tdir: Path, name: str, *, strict: bool) -> tuple[nn.Module, bool, Any] | None:
    """The native backbone (+ its WordPiece tokenizer, or None where that does not apply).

    Returns None when the model is outside the native encoder and ``strict`` is off.
    """
    from csekit.modeling.native_bert import NativeUnsupported, load_native_encoder
    from csekit.modeling.native_tokenizer import WordPieceTokenizer

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


def _load_hf_backbone(tdir: Path, name: str, dropout: float | None,
                      trust_remote_code: bool) -> tuple[nn.Module, bool]:
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(tdir, trust_remote_code=trust_remote_code,
                                            local_files_only=True)
    except Exception as err:
        raise ModelLoadError(f"cannot read the config of {name}: {first_line(err)}") from err
    config.output_hidden_states = False
    if dropout is not None:
        for key in _DROPOUT_KEYS:
            if isinstance(getattr(config, key, None), float):
                setattr(config, key, float(dropout))
    try:
        with _quiet_transformers():
            # dtype=float32: fp32 master weights whatever the checkpoint stores (transformers 5
            # loads the stored dtype by default); mixed precision is autocast on top.
            backbone, info = AutoModel.from_pretrained(
                tdir, config=config, use_safetensors=True, trust_remote_code=trust_remote_code,
                local_files_only=True, output_loading_info=True, dtype=torch.float32)
    except Exception as err:
        raise _load_error(name, err) from err
    pooler_trained = not any(k.startswith("pooler.") for k in info.get("missing_keys", ()))
    return backbone, pooler_trained


def _load_hf_tokenizer(tdir: Path, name: str, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(tdir, trust_remote_code=trust_remote_code,
                                             local_files_only=True)
    except Exception as err:
        raise _load_error(name, err) from err


def _load_error(name: str, err: Exception) -> ModelLoadError:
    if isinstance(err, ValueError) and "trust_remote_code" in str(err):
        return ModelLoadError(f"{name} needs custom code; pass trust_remote_code=True "
                              "(--trust-remote-code) only if you trust it")
    return ModelLoadError(f"cannot load model {name}: {first_line(err)}")


__all__ = ["BACKENDS", "Encoder", "auto_uses_native", "library_versions"]

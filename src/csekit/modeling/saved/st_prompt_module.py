"""A sentence-transformers input module for csekit's prompt pooler (PromptBERT).

csekit copies this file into a saved prompt model as ``csekit_prompt.py``; ``modules.json``
names ``csekit_prompt.CsekitPromptTransformer`` as module 0, so
``SentenceTransformer(path, trust_remote_code=True)`` embeds exactly as csekit does. The file
imports only torch and sentence-transformers (not csekit). Everything the template needs is in
``csekit_prompt.json`` beside it, as token ids: the special tokens, the template's text before
and after the sentence slot, where the mask is, whether the sentence is tokenised with a leading
space, the '.' rule, the sentence's token budget, and (optionally) template denoising.

A row is ``head + prefix + sentence[:budget] + suffix + tail``; the embedding is the last hidden
state at the mask, minus the template-only state (positions after the slot shifted by the
sentence length) when ``denoise`` is set. See csekit.modeling.representation.prompt for the definitions.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from sentence_transformers.models import Transformer

CONFIG_NAME = "csekit_prompt.json"
_EXEMPT = ".?\"'"


_HUB_KEYS = ("revision", "token", "cache_dir", "local_files_only", "subfolder")


def _hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The download settings sentence-transformers loaded the model with (revision, token,
    cache folder, local_files_only, subfolder): it hands them to a Transformer module inside
    ``config_kwargs`` / ``model_kwargs`` (``config_args`` / ``model_args`` before v5)."""
    for key in ("config_kwargs", "model_kwargs", "config_args", "model_args"):
        given = kwargs.get(key)
        if isinstance(given, dict):
            return {k: given[k] for k in _HUB_KEYS if given.get(k) not in (None, "")}
    return {}


def _read_config(path: str, hub: dict[str, Any] | None = None) -> dict[str, Any]:
    """``csekit_prompt.json`` of the model at ``path``: from the folder, or downloaded from the
    same revision (and cache, token, ...) as the model's weights."""
    hub = dict(hub or {})
    subfolder = hub.pop("subfolder", "") or ""
    if os.path.isdir(path):
        with open(os.path.join(path, subfolder, CONFIG_NAME), encoding="utf-8") as f:
            return json.load(f)
    from huggingface_hub import hf_hub_download  # a hub id

    with open(hf_hub_download(path, CONFIG_NAME, subfolder=subfolder or None, **hub),
              encoding="utf-8") as f:
        return json.load(f)


class CsekitPromptTransformer(Transformer):
    """Transformer + PromptBERT template around each sentence + mask-token pooling."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        source = kwargs.get("model_name_or_path", args[0] if args else None)
        self.prompt_config = _read_config(str(source), _hub_kwargs(kwargs))

    def _sentence_text(self, s: str) -> str:
        c = self.prompt_config
        s = s.strip()
        if c["add_period"] and s and s[-1] not in _EXEMPT:
            s += "."
        return (" " + s) if c["sentence_space"] else s

    def preprocess(self, inputs: Any, prompt: str | None = None, **kwargs: Any) -> dict[str, Any]:
        c = self.prompt_config
        texts = [self._sentence_text((prompt or "") + str(t)) for t in inputs]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        pre, post = c["head"] + c["prefix"], c["suffix"] + c["tail"]
        rows = [pre + x[: c["budget"]] + post for x in ids]
        width = max((len(r) for r in rows), default=0)
        input_ids = torch.full((len(rows), width), int(c["pad_token_id"]), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def _mask_index(self, lengths: torch.Tensor) -> torch.Tensor:
        c = self.prompt_config
        if c["mask_from_end"]:
            return lengths - int(c["mask_offset"])
        return torch.full_like(lengths, int(c["mask_offset"]))

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        features = super().forward(features, **kwargs)
        hidden = features["token_embeddings"]
        lengths = features["attention_mask"].sum(-1).long()
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        emb = hidden[rows, self._mask_index(lengths)]
        c = self.prompt_config
        if c.get("denoise"):
            emb = emb - self._template_states(lengths - len(c["empty_ids"]), hidden.device)
        features["sentence_embedding"] = emb
        return features

    def _template_states(self, n: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Template with an empty sentence, positions after the slot shifted by n."""
        c = self.prompt_config
        empty = torch.tensor(c["empty_ids"], dtype=torch.long, device=device)
        ids = empty.unsqueeze(0).expand(n.shape[0], -1)
        positions = torch.arange(len(c["empty_ids"]), device=device) + int(c["position_offset"])
        positions = positions.unsqueeze(0).repeat(n.shape[0], 1)
        positions[:, int(c["slot_start"]):] += n.unsqueeze(1)
        out = self.auto_model(input_ids=ids, attention_mask=torch.ones_like(ids),
                              position_ids=positions, return_dict=True).last_hidden_state
        idx = self._mask_index(torch.full_like(n, len(c["empty_ids"])))
        return out[torch.arange(n.shape[0], device=device), idx]

"""Template denoising of the prompt pooler (PromptBERT ``--mask_embedding_sentence_delta``): the
template-only rows and their states; see :mod:`csekit.modeling.representation.prompt`.

``prompt`` is the encoder's :class:`~csekit.modeling.representation.prompt.PromptPooling`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def template_inputs(prompt: Any, templates: Sequence[int], lengths: Sequence[int],
                    device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Template-only rows with position ids shifted by the sentence length after the slot.

    Row u is template ``templates[u]`` with an empty sentence; positions are ``offset + j`` for
    the head and the text before the slot, ``offset + j + lengths[u]`` from the slot on, i.e.
    the positions those tokens have in a row whose sentence has ``lengths[u]`` tokens.

    Shape: U pairs -> input_ids, attention_mask, position_ids (U, L_max); mask_index (U,).
    """
    rows = [prompt.bound[t].empty_ids() for t in templates]
    width = max(map(len, rows))
    pad = prompt.tokenizer.pad_token_id if prompt.tokenizer.pad_token_id is not None else 0
    u = len(rows)
    ids = torch.full((u, width), int(pad), dtype=torch.long)
    mask = torch.zeros((u, width), dtype=torch.long)
    positions = torch.zeros((u, width), dtype=torch.long)
    mask_index = torch.zeros(u, dtype=torch.long)
    off = prompt.position_offset
    for i, (t, n, r) in enumerate(zip(templates, lengths, rows)):
        b = prompt.bound[t]
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
        p = torch.arange(len(r), dtype=torch.long) + off
        p[b.slot_start:] += int(n)
        positions[i, :len(r)] = p
        if len(r) < width:  # (padding: any valid position; masked out anyway)
            positions[i, len(r):] = off
        mask_index[i] = b.mask_index(len(r))
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "position_ids": positions.to(device), "mask_index": mask_index.to(device)}


def template_states(run: Callable[..., torch.Tensor], prompt: Any,
                    templates: Sequence[int], lengths: Sequence[int], *,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """Mask-token states of the template-only rows of :func:`template_inputs`.

    Shape: U (template, length) pairs -> (U, H).
    """
    inp = template_inputs(prompt, templates, lengths, device)
    hidden = run(inp["input_ids"], inp["attention_mask"], inp["position_ids"])
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), inp["mask_index"]]


__all__ = ["template_inputs", "template_states"]

"""Length-sorted sub-batches for the training forward: the same embeddings, less padding.

A training batch of 2B rows is padded to its longest sentence, so every shorter row carries
padding through every layer (on wiki sentences under a 32-token cap, about 30% of the
tokens). The contrastive losses do not depend on the order of rows, and each row's embedding
depends only on its own tokens (the attention mask hides padding; dropout draws an
independent mask per element). So the rows can be run as a few groups of similar length, each
padded only to its own longest row, and the embeddings put back in input order. That is the
same maths; the numbers differ from the one-batch forward only by float rounding (different
matrix-product shapes) and, with dropout on, by which random draws land on which element.

Everything happens inside one call of ``Encoder.forward``, so under DDP it is still one
forward of the wrapped module per micro-step (one backward, one gradient all-reduce).

:func:`plan_length_subbatches` chooses the groups: rows sorted by length, cut only where the
length changes, into at most ``max_parts`` groups that minimise padded tokens plus a fixed
cost per group (``part_cost_tokens``: each extra forward and backward has a fixed host cost,
and small matrix products run less efficiently). An exact dynamic programme over the distinct
lengths (at most ``max_seq_len`` of them).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import torch

# Fixed cost of one more sub-batch, in padded tokens: one more forward + backward has a host
# cost (Python, operator dispatch) and small matrix products run less efficiently. A chosen
# value for a width-384 model (all-MiniLM-L6-v2), not a tuned one (the machine was too loaded
# to tune it): it keeps tiny groups of a few long rows from becoming forwards of their own.
DEFAULT_PART_COST_TOKENS = 96
_REFERENCE_WIDTH = 384


def part_cost_for_width(hidden_size: int) -> int:
    """The fixed cost of a sub-batch in tokens for a model of this width.

    The host cost of a forward grows with the number of layers, the cost of a token with
    layers x width^2, so in tokens the fixed cost scales as 1 / width^2: about 24 tokens for
    BERT-base (768), 96 for MiniLM (384), and thousands for a toy width-32 model, where
    splitting the batch would cost more than the padding it saves.
    """
    return max(1, round(DEFAULT_PART_COST_TOKENS * (_REFERENCE_WIDTH / max(hidden_size, 1)) ** 2))


def plan_length_subbatches(lengths: Sequence[int] | np.ndarray | torch.Tensor, max_parts: int,
                           part_cost_tokens: int = DEFAULT_PART_COST_TOKENS) -> list[np.ndarray]:
    """Split rows into at most ``max_parts`` groups of consecutive sorted lengths.

    Minimises ``sum(rows_g * max_len_g) + part_cost_tokens * n_groups`` exactly. Ties in length
    keep input order (stable sort). Returns index arrays (int64), shortest group first; their
    concatenation is a permutation of ``range(len(lengths))``.

    Shape: lengths (N,) -> list of (n_g,) with sum n_g = N.
    """
    lens = np.asarray(lengths.tolist() if isinstance(lengths, torch.Tensor) else lengths,
                      dtype=np.int64)
    n = len(lens)
    if n == 0:
        return []
    order = np.argsort(lens, kind="stable")
    if max_parts <= 1:
        return [order]
    values, counts = np.unique(lens, return_counts=True)
    m = len(values)
    rows = np.concatenate([[0], np.cumsum(counts)])  # rows[j] = rows with length < values[j]
    k = min(max_parts, m)
    inf = np.iinfo(np.int64).max // 4
    # best[g, j]: least cost of putting the first j distinct lengths into g groups.
    best = np.full((k + 1, m + 1), inf, dtype=np.int64)
    cut = np.zeros((k + 1, m + 1), dtype=np.int64)
    best[0, 0] = 0
    for g in range(1, k + 1):
        for j in range(1, m + 1):
            a = np.arange(j)  # the group covers distinct lengths a .. j-1
            cost = best[g - 1, a] + (rows[j] - rows[a]) * values[j - 1] + part_cost_tokens
            i = int(np.argmin(cost))
            best[g, j], cut[g, j] = cost[i], i
    g = int(np.argmin(best[1:, m])) + 1
    bounds = [m]
    for gg in range(g, 0, -1):
        bounds.append(int(cut[gg, bounds[-1]]))
    bounds.reverse()  # distinct-length boundaries 0 = b0 < b1 < ... < bg = m
    return [order[rows[lo]:rows[hi]] for lo, hi in itertools.pairwise(bounds)]


def right_padded_lengths(attention_mask: torch.Tensor) -> list[int] | None:
    """Row lengths when every row's mask is ones then zeros (right padding), else None.

    One small device-to-host copy (N + 1 integers) when the mask lives on a GPU.

    Shape: attention_mask (N, L) -> N lengths.
    """
    mask = attention_mask.to(torch.int64)
    lengths = mask.sum(1)
    prefix = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0) < lengths.unsqueeze(1)
    ok = (mask.bool() == prefix).all().to(torch.int64).view(1)
    *out, is_right_padded = torch.cat([lengths, ok]).tolist()
    return out if is_right_padded else None


def forward_length_subbatched(
    forward_one: Callable[..., torch.Tensor],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None,
    *,
    max_parts: int,
    part_cost_tokens: int = DEFAULT_PART_COST_TOKENS,
) -> torch.Tensor:
    """Run ``forward_one`` on length-sorted groups of rows and return the rows in input order.

    ``forward_one(input_ids, attention_mask, token_type_ids, padded=...)`` embeds one group;
    ``padded`` is False when the group has no padding at all (every row as long as the group),
    so the caller may skip the attention mask. Falls back to one call when the batch is not
    right-padded or one group is best.

    Shape: input_ids, attention_mask, token_type_ids (N, L) -> (N, d).
    """
    lengths = right_padded_lengths(attention_mask)
    if lengths is None:
        return forward_one(input_ids, attention_mask, token_type_ids, padded=True)
    groups = plan_length_subbatches(lengths, max_parts, part_cost_tokens)
    if len(groups) == 1:
        width = max(max(lengths), 1)
        padded = min(lengths) < width
        return forward_one(input_ids[:, :width], attention_mask[:, :width],
                           token_type_ids[:, :width] if token_type_ids is not None else None,
                           padded=padded)
    device = input_ids.device
    parts = []
    for idx in groups:
        width = max(int(lengths[int(idx[-1])]), 1)  # sorted: the last row is the longest
        padded = int(lengths[int(idx[0])]) < width
        rows = torch.from_numpy(idx).to(device)
        parts.append(forward_one(
            input_ids.index_select(0, rows)[:, :width],
            attention_mask.index_select(0, rows)[:, :width],
            token_type_ids.index_select(0, rows)[:, :width] if token_type_ids is not None
            else None,
            padded=padded))
    order = torch.from_numpy(np.concatenate(groups)).to(device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=device)
    return torch.cat(parts).index_select(0, inverse)


__all__ = ["DEFAULT_PART_COST_TOKENS", "forward_length_subbatched", "part_cost_for_width",
           "plan_length_subbatches", "right_padded_lengths"]

"""Batch planning and the batch loop of :meth:`csekit.modeling.encoder.Encoder.encode` (fast
batched inference).

Where the time goes on a CPU is the backbone's matrix products, so the wins are in not
computing what is thrown away: each unique sentence is tokenised once and encoded once; the
sentences are sorted by *token* length (not characters), so a batch pads (almost) nothing;
batches are bounded by a token budget as well as a sentence count; everything runs under
``torch.inference_mode`` with one tokenizer call for the whole input; on the CPU in fp32 the
linear layers run through oneDNN with bias and GELU fused (:mod:`csekit.modeling.native.cpu_fastpath`,
off with ``CSEKIT_CPU_FASTPATH=0``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from csekit.errors import ConfigError


def check_sentences(sentences: Any) -> list[str]:
    """A list of str, or a one-line error naming the first thing that is not one."""
    if isinstance(sentences, str):
        raise ConfigError("encode() takes a list of sentences, not a single string")
    sentences = list(sentences)
    for i, s in enumerate(sentences):
        if not isinstance(s, str):
            raise ConfigError(f"sentence {i} is a {type(s).__name__}, not a str")
    return sentences


def unique_sentences(sentences: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct sentences in order of first appearance, and each input's index among them."""
    index: dict[str, int] = {}
    inverse = np.fromiter((index.setdefault(s, len(index)) for s in sentences),
                          dtype=np.int64, count=len(sentences))
    return list(index), inverse


def token_ids_for_encode(tokenizer: Any, prompt: Any, sentences: Sequence[str],
                         max_seq_len: int) -> tuple[list[list[int]], list[list[int]] | None]:
    """Token ids (unpadded) of each sentence, and its token type ids where they are not all 0.

    With a prompt pooler (:class:`~csekit.modeling.representation.prompt.PromptPooling`): each
    sentence in template T1 with the evaluation rules, ``max_seq_len`` counting sentence tokens.
    """
    if prompt is not None:
        ids = prompt.encode_ids(list(sentences), max_seq_len, template=0,
                                period=prompt.config.eval_period)
        return ids, None
    want_tt = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    encoded = tokenizer(list(sentences), truncation=True, max_length=max_seq_len, padding=False,
                        return_attention_mask=False, return_token_type_ids=want_tt)
    tt = encoded.get("token_type_ids") if want_tt else None
    if tt is not None and not any(any(t) for t in tt):
        tt = None  # all zeros: the backbone's default, no need to build and pass them
    return encoded["input_ids"], tt


def stable_rows(n: int) -> int:
    """The largest row count <= n of the form 2^k or 3 * 2^k (1, 2, 3, 4, 6, 8, 12, 16, 24, ...)."""
    if n < 1:
        raise ValueError(f"row count must be >= 1, got {n}")
    p = 1 << (n.bit_length() - 1)  # largest power of two <= n
    return 3 * p // 2 if p >= 2 and 3 * p // 2 <= n else p


def plan_batches(lengths: np.ndarray, batch_size: int, max_tokens: int,
                 max_padding: float = 0.1, *, stable_shapes: bool = False) -> list[np.ndarray]:
    """Split indices, sorted longest first, into batches of <= batch_size sentences,
    <= max_tokens padded tokens and at most ``max_padding`` padding (as a fraction of the
    batch's real tokens); a single over-long sentence still gets its own batch.

    The padding bound matters for small or length-diverse inputs: 300 random sentences in
    batches of 128 would otherwise pad the shorter ones to the longest of a wide range.
    (Lengths are sorted, so a batch's padding fraction only grows as it takes more sentences.)

    ``stable_shapes`` rounds each batch's row count down to :func:`stable_rows` (the rest is
    planned again), so batch shapes come from a small fixed set. Streaming encodes need it:
    oneDNN and the CPU kernels keep per-shape state (primitive cache, scratch buffers), and with
    arbitrary row counts every new chunk brings new shapes, so memory crept up with the corpus
    (+74 MB over 20 chunks of 8,192, batch 128, still rising) instead of levelling off.

    Shape: lengths (N,) -> list of index arrays.
    """
    order = np.argsort(-lengths, kind="stable")
    sorted_len = lengths[order].astype(np.int64)
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        longest = max(int(sorted_len[start]), 1)
        cap = max(1, min(batch_size, max_tokens // longest, n - start))
        real = np.cumsum(sorted_len[start:start + cap])
        ks = np.arange(1, cap + 1)
        size = max(1, int(np.count_nonzero(ks * longest <= (1.0 + max_padding) * real)))
        if stable_shapes:
            size = stable_rows(size)
        batches.append(order[start:start + size])
        start += size
    return batches


def pad_batch(rows: Sequence[Sequence[int]], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token id lists to ``width``; returns (ids, attention mask), both int64.

    Shape: len(rows) lists of <= width ids -> (n, width), (n, width).
    """
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = row
        mask[r, :len(row)] = 1
    return ids, mask


def progress_bar(total: int, enabled: bool) -> Any:
    """A tqdm bar on the main process only, never in CI; None when disabled."""
    from csekit.distributed import is_main_process

    if not enabled or os.environ.get("CI") or not is_main_process():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc="encoding", unit="sent")


def run_batches(forward: Callable[..., torch.Tensor], ids_list: Sequence[Sequence[int]],
                tt_list: Sequence[Sequence[int]] | None, lengths: np.ndarray,
                batches: Sequence[np.ndarray], pad_id: int, out: torch.Tensor,
                device: torch.device, *, show_progress: bool = False) -> None:
    """``out[idx] = forward(ids, mask, token_types)`` for each planned batch ``idx`` (rows sorted
    by length, so the first row's length is the batch's width), with a progress bar."""
    bar = progress_bar(len(ids_list), show_progress)
    try:
        for idx in batches:
            width = int(lengths[idx[0]])
            ids, mask = pad_batch([ids_list[j] for j in idx], width, pad_id)
            tts = None
            if tt_list is not None:
                tts, _ = pad_batch([tt_list[j] for j in idx], width, 0)
            emb = forward(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device),
                          torch.from_numpy(tts).to(device) if tts is not None else None)
            out[torch.from_numpy(idx)] = emb.float().cpu()
            if bar is not None:
                bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()

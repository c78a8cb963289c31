"""Fast batched inference for :meth:`csekit.encoder.Encoder.encode`.

Where the time goes on a CPU is the backbone's matrix products, so the wins are in not
computing what is thrown away: each unique sentence is tokenised once and encoded once; the
sentences are sorted by *token* length (not characters), so a batch pads (almost) nothing;
batches are bounded by a token budget as well as a sentence count; everything runs under
``torch.inference_mode`` with one tokenizer call for the whole input; on the CPU in fp32 the
linear layers run through oneDNN with bias and GELU fused (:mod:`csekit.modeling.cpu_fastpath`,
off with ``CSEKIT_CPU_FASTPATH=0``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from csekit.errors import ConfigError
from csekit.modeling.cpu_fastpath import fastpath_enabled, fused_cpu_linears

if TYPE_CHECKING:
    from csekit.encoder import Encoder

PRECISIONS = ("fp32", "bf16", "fp16")


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast for bf16/fp16 (fp16 only on CUDA); a null context for fp32."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def plan_batches(lengths: np.ndarray, batch_size: int, max_tokens: int,
                 max_padding: float = 0.1) -> list[np.ndarray]:
    """Split indices, sorted longest first, into batches of <= batch_size sentences,
    <= max_tokens padded tokens and at most ``max_padding`` padding (as a fraction of the
    batch's real tokens); a single over-long sentence still gets its own batch.

    The padding bound matters for small or length-diverse inputs: 300 random sentences in
    batches of 128 would otherwise pad the shorter ones to the longest of a wide range.
    (Lengths are sorted, so a batch's padding fraction only grows as it takes more sentences.)

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
        batches.append(order[start:start + size])
        start += size
    return batches


def _progress(total: int, enabled: bool) -> Any:
    from csekit.distributed import is_main_process

    if not enabled or os.environ.get("CI") or not is_main_process():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc="encoding", unit="sent")


def encode_sentences(
    enc: Encoder,
    sentences: Sequence[str] | Iterable[str],
    *,
    batch_size: int,
    max_seq_len: int,
    device: str | torch.device | None,
    precision: str,
    normalize: bool,
    show_progress: bool,
    max_tokens: int | None,
) -> torch.Tensor:
    """See :meth:`Encoder.encode`. Shape: N sentences -> (N, H) float32 CPU."""
    if isinstance(sentences, str):
        raise ConfigError("encode() takes a list of sentences, not a single string")
    sentences = list(sentences)
    for i, s in enumerate(sentences):
        if not isinstance(s, str):
            raise ConfigError(f"sentence {i} is a {type(s).__name__}, not a str")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if max_seq_len < 2:
        raise ConfigError(f"max sequence length must be >= 2, got {max_seq_len}")
    dev = torch.device(device) if device is not None else enc.device
    ctx = autocast_context(dev, precision)
    if dev != enc.device:
        enc.to(dev)

    index: dict[str, int] = {}
    inverse = np.fromiter((index.setdefault(s, len(index)) for s in sentences),
                          dtype=np.int64, count=len(sentences))
    unique = list(index)
    hidden = enc.hidden_size
    if not unique:
        return torch.empty(0, hidden, dtype=torch.float32)

    tok = enc.tokenizer
    want_tt = "token_type_ids" in getattr(tok, "model_input_names", ())
    encoded = tok(unique, truncation=True, max_length=max_seq_len, padding=False,
                  return_attention_mask=False, return_token_type_ids=want_tt)
    ids_list: list[list[int]] = encoded["input_ids"]
    tt_list: list[list[int]] | None = encoded.get("token_type_ids") if want_tt else None
    if tt_list is not None and not any(any(t) for t in tt_list):
        tt_list = None  # all zeros: the backbone's default, no need to build and pass them
    lengths = np.fromiter(map(len, ids_list), dtype=np.int64, count=len(unique))
    budget = max_tokens if max_tokens is not None else batch_size * 32
    batches = plan_batches(lengths, batch_size, max(budget, 1))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    out = torch.empty(len(unique), hidden, dtype=torch.float32)
    was_training = enc.training
    enc.eval()
    bar = _progress(len(unique), show_progress)
    # (the native backend fuses its own linear layers; this patches a transformers model's)
    use_fast = (dev.type == "cpu" and precision == "fp32" and enc.backend == "hf"
                and fastpath_enabled())
    fast = fused_cpu_linears(enc.backbone) if use_fast else contextlib.nullcontext()
    try:
        with torch.inference_mode(), ctx, fast:
            for idx in batches:
                width = int(lengths[idx[0]])
                ids = np.full((len(idx), width), pad_id, dtype=np.int64)
                mask = np.zeros((len(idx), width), dtype=np.int64)
                tts = np.zeros((len(idx), width), dtype=np.int64) if tt_list is not None else None
                for row, j in enumerate(idx):
                    n = int(lengths[j])
                    ids[row, :n] = ids_list[j]
                    mask[row, :n] = 1
                    if tts is not None and tt_list is not None:
                        tts[row, :n] = tt_list[j]
                emb = enc(torch.from_numpy(ids).to(dev), torch.from_numpy(mask).to(dev),
                          torch.from_numpy(tts).to(dev) if tts is not None else None)
                out[torch.from_numpy(idx)] = emb.float().cpu()
                if bar is not None:
                    bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()
        enc.train(was_training)
    if normalize:
        out = F.normalize(out, dim=-1)
    return out[torch.from_numpy(inverse)]

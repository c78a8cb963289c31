"""A leaner training forward for BERT / RoBERTa backbones: the same maths, less work.

``Encoder`` runs the backbone's encoder layers through :func:`lean_last_hidden` in train mode
when :func:`lean_unsupported` finds nothing against it. It reads the backbone's own parameters
(no copy, no second set of weights: the optimiser, DDP, checkpoints and saved folders see the
same ``nn.Module``), and computes the embeddings as ``BertEmbeddings`` / ``RobertaEmbeddings``
do and each layer as ``BertLayer`` does in transformers (sdpa attention):

    x  = LayerNorm(dropout(Wo . attn(x)) + x)           attn: softmax(QK^T / sqrt(d) + mask),
    x  = LayerNorm(dropout(W2 . act(W1 . x)) + x)             dropout on the probabilities

with three changes that do not change what a pooled embedding is:

* **Q, K and V are one matrix product** with the three weights stacked per step
  (``torch.cat``; the gradient flows back to the three ``nn.Linear`` weights). One pass over
  the input instead of three, and in the backward one larger product instead of three.
* **No dead work in the last layer for [CLS] pooling.** With ``cls_only`` the last layer
  computes keys and values for every token (the [CLS] query attends to them) but the query,
  the attention output, its projection, both LayerNorms and the feed-forward only for
  position 0: the other positions of the last layer are never read by a ``cls`` /
  ``cls_before_pooler`` pooler. In MiniLM's 6 layers that is about a sixth of the encoder's
  matrix work; in BERT-base's 12, about a twelfth.
* **Cheaper dropout masks on the CPU** (:func:`bernoulli_keep_noise`): torch draws a CPU
  Bernoulli mask one element at a time from mt19937; here numpy's SFC64, seeded from torch's
  generator, gives 32 random bits per element, five times faster, kept with probability
  within 2.4e-10 of the model's rate. On CUDA, torch's own fused dropout runs.

Dropout is otherwise the same: one independent Bernoulli mask per element at the model's
rates, on the embeddings, the attention probabilities and the two residual branches. Positions
that are not computed draw no mask, which does not change the distribution of the ones that
are. The embeddings are computed here (word + token type, + position, LayerNorm, dropout, with
RoBERTa's padding-aware positions) so that their dropout uses the same masks. At dropout 0 the
outputs equal transformers' to float rounding (``tests/test_train_forward.py``, forward and
gradients, padded and unpadded).

Anything else (other architectures, relative position embeddings, decoders, cross-attention,
chunked feed-forward, gradient checkpointing, LoRA adapters, ``output_hidden_states`` poolers)
runs through
the backbone's own ``forward``: :func:`lean_unsupported` says why.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LEAN_MODEL_TYPES: tuple[str, ...] = ("bert", "roberta")
_EMBEDDINGS = {"bert": "BertEmbeddings", "roberta": "RobertaEmbeddings"}


def bernoulli_keep_mask(shape: torch.Size | tuple[int, ...], keep: float) -> torch.Tensor:
    """An i.i.d. CPU keep mask: True with probability ``keep`` (within 2.4e-10), else False.

    torch draws a CPU Bernoulli mask one element at a time from its mt19937 generator (about
    12 ms for a (128, 32, 384) tensor on this 2-core VM, 9% of a MiniLM training step). Here one
    64-bit seed is drawn from torch's generator (so ``torch.manual_seed``, the Trainer's seed +
    rank and its checkpointed RNG state govern it as before) and seeds numpy's SFC64, whose raw
    32-bit words w give the mask ``w < ceil(keep * 2^32)``: each element is kept with
    probability ceil(keep * 2^32) / 2^32, within 2.4e-10 of ``keep`` (torch's own float32 draw
    on CUDA is within 6e-8), independently of every other. About 5x faster.

    Shape: -> ``shape`` (bool).
    """
    n = math.prod(shape)
    seed = int(torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64).item())
    words = np.random.SFC64(seed).random_raw((n + 1) // 2).view(np.uint32)[:n]
    mask = torch.from_numpy(words < np.uint32(min(math.ceil(keep * 2.0**32), 2**32 - 1)))
    return mask.view(shape)


def bernoulli_keep_noise(shape: torch.Size | tuple[int, ...], keep: float,
                         dtype: torch.dtype) -> torch.Tensor:
    """Dropout noise on the CPU: i.i.d. ``1 / keep`` with probability ``keep``, else 0
    (:func:`bernoulli_keep_mask`). In bf16 / fp16, ``1 / keep`` itself is rounded (bf16(1/0.9)
    is 1.109375): :func:`dropout` does not use this noise for those dtypes.

    Shape: -> ``shape``.
    """
    return bernoulli_keep_mask(shape, keep).to(dtype).mul_(1.0 / keep)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(x, p, training)``, with :func:`bernoulli_keep_mask` for CPU tensors.

    fp32 / fp64: ``x * noise`` (:func:`bernoulli_keep_noise`). Reduced precision (bf16 / fp16,
    CPU autocast): ``(x * mask) * (1 / keep)``, the scale a Python float, so that torch
    multiplies in fp32 and rounds once, as transformers' ``nn.Dropout`` does; a bf16 noise of
    1.109375 instead of 1.1111 would shrink every kept value by 0.16% at every dropout site.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not 0.0 < p < 1.0:
        return F.dropout(x, p, training)
    keep = 1.0 - p
    if x.dtype in (torch.float32, torch.float64):
        return x * bernoulli_keep_noise(x.shape, keep, x.dtype)
    return (x * bernoulli_keep_mask(x.shape, keep).to(x.dtype)) * (1.0 / keep)


def lean_unsupported(backbone: nn.Module) -> str | None:
    """Why :func:`lean_last_hidden` cannot run ``backbone``; None when it can."""
    config = getattr(backbone, "config", None)
    if config is None:
        return "the backbone has no config"
    model_type = getattr(config, "model_type", None)
    if model_type not in LEAN_MODEL_TYPES:
        return f"model type {model_type!r} (the lean forward covers {', '.join(LEAN_MODEL_TYPES)})"
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        return f"position_embedding_type {config.position_embedding_type!r}"
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "a decoder / cross-attention configuration"
    if getattr(config, "chunk_size_feed_forward", 0):
        return "chunked feed-forward"
    # transformers 5 renamed the flag (the old name warns); either one means checkpointing
    # (read on the instance: a peft wrapper forwards it to the base model)
    flag = getattr(backbone, "is_activation_checkpointing", None)
    if flag is None:
        flag = getattr(backbone, "is_gradient_checkpointing", False)
    if flag:
        return "gradient checkpointing"
    if hasattr(backbone, "peft_config"):  # (it reads base weights; LoRA layers would be skipped)
        return "LoRA adapters"
    impl = getattr(config, "_attn_implementation", None)
    if impl not in (None, "sdpa", "eager"):
        return f"attention implementation {impl!r}"
    emb = getattr(backbone, "embeddings", None)
    if type(emb).__name__ != _EMBEDDINGS[model_type]:
        return f"embeddings {type(emb).__name__} (the lean forward covers {_EMBEDDINGS[model_type]})"
    encoder = getattr(backbone, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None or len(layers) == 0:
        return "not the BertModel module layout"
    for layer in layers:
        try:
            attn = layer.attention.self
            _ = (attn.query, attn.key, attn.value, layer.attention.output.dense,
                 layer.attention.output.LayerNorm, layer.intermediate.dense,
                 layer.intermediate.intermediate_act_fn, layer.output.dense, layer.output.LayerNorm)
        except AttributeError:
            return "not the BertLayer module layout"
        if not all(isinstance(m, nn.Linear) for m in (attn.query, attn.key, attn.value)):
            return "attention projections that are not nn.Linear"
    return None


def _embeddings(backbone: nn.Module, input_ids: torch.Tensor,
                token_type_ids: torch.Tensor | None) -> torch.Tensor:
    """``BertEmbeddings`` / ``RobertaEmbeddings`` in train or eval mode, with :func:`dropout`.

    word + token type, then + position, LayerNorm, dropout, as transformers adds them. BERT's
    positions are 0..L-1; RoBERTa's count the non-padding tokens from ``padding_idx + 1`` and
    give padding ``padding_idx`` (transformers' ``create_position_ids_from_input_ids``).

    Shape: (n, L) -> (n, L, H).
    """
    emb = backbone.embeddings
    length = input_ids.shape[1]
    if backbone.config.model_type == "roberta":
        keep = input_ids.ne(emb.padding_idx).to(torch.int64)
        positions = torch.cumsum(keep, dim=1) * keep + emb.padding_idx
    else:
        positions = emb.position_ids[:, :length]
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    x = emb.word_embeddings(input_ids) + emb.token_type_embeddings(token_type_ids)
    x = x + emb.position_embeddings(positions)
    return dropout(_layer_norm(x, emb.LayerNorm), emb.dropout.p, backbone.training)


def _layer_norm(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(n, L, heads * d) -> (n, heads, L, d), a view."""
    n, length, width = t.shape
    return t.view(n, length, heads, width // heads).transpose(1, 2)


def _layer(layer: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, *, heads: int,
           training: bool, cls_only: bool) -> torch.Tensor:
    """One BertLayer; ``cls_only``: only position 0's output (keys/values from all tokens).

    Shape: x (n, L, H), mask None or bool (n, 1, 1, L) -> (n, L, H), or (n, 1, H) with cls_only.
    """
    attn = layer.attention.self
    if cls_only:
        q = F.linear(x[:, :1], attn.query.weight, attn.query.bias)
        kv = F.linear(x, torch.cat([attn.key.weight, attn.value.weight]),
                      torch.cat([attn.key.bias, attn.value.bias]))
        k, v = kv.chunk(2, dim=-1)
        residual = x[:, :1]
    else:
        qkv = F.linear(x, torch.cat([attn.query.weight, attn.key.weight, attn.value.weight]),
                       torch.cat([attn.query.bias, attn.key.bias, attn.value.bias]))
        q, k, v = qkv.chunk(3, dim=-1)
        residual = x
    q, k, v = _split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads)
    p_attn = attn.dropout.p if training else 0.0
    if p_attn > 0.0 and q.device.type == "cpu":
        # what torch's CPU sdpa computes with dropout on (its math kernel), with csekit's mask
        scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        ctx = torch.matmul(dropout(scores.softmax(-1), p_attn, True), v)
    else:
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_attn)
    n, _, length, d = ctx.shape
    ctx = ctx.transpose(1, 2).reshape(n, length, heads * d)
    out = layer.attention.output
    h = dropout(out.dense(ctx), out.dropout.p, training)
    x = _layer_norm(h + residual, out.LayerNorm)
    inner = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(x))
    out = layer.output
    h = dropout(out.dense(inner), out.dropout.p, training)
    return _layer_norm(h + x, out.LayerNorm)


def lean_last_hidden(backbone: nn.Module, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor | None,
                     token_type_ids: torch.Tensor | None = None, *,
                     cls_only: bool = False) -> torch.Tensor:
    """The backbone's last hidden state, as ``backbone(...).last_hidden_state`` computes it.

    ``attention_mask`` None: no row is padded (attention runs without a mask). ``cls_only``:
    only position 0 of the last layer (see the module docstring). Dropout follows
    ``backbone.training``.

    Shape: input_ids, attention_mask, token_type_ids (n, L) -> (n, L, H), or (n, 1, H) with
    ``cls_only``.
    """
    config = backbone.config
    x = _embeddings(backbone, input_ids, token_type_ids)
    mask = None
    if attention_mask is not None:
        mask = attention_mask.to(torch.bool)[:, None, None, :]
    heads = int(config.num_attention_heads)
    training = backbone.training
    layers = backbone.encoder.layer
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        x = _layer(layer, x, mask, heads=heads, training=training,
                   cls_only=cls_only and i == last)
    return x


__all__ = ["LEAN_MODEL_TYPES", "bernoulli_keep_mask", "bernoulli_keep_noise", "dropout",
           "lean_last_hidden", "lean_unsupported"]

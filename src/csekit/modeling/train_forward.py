"""A leaner training forward for BERT / RoBERTa backbones: the same maths, less work.

``Encoder`` runs the backbone's encoder layers through :func:`lean_last_hidden` in train mode
when :func:`lean_unsupported` finds nothing against it. It reads the backbone's own parameters
(no copy, no second set of weights: the optimiser, DDP, checkpoints and saved folders see the
same ``nn.Module``), calls the backbone's own embedding module, and computes each layer as
``BertLayer`` does in transformers (sdpa attention):

    x  = LayerNorm(dropout(Wo . attn(x)) + x)           attn: softmax(QK^T / sqrt(d) + mask),
    x  = LayerNorm(dropout(W2 . act(W1 . x)) + x)             dropout on the probabilities

with two changes that do not change what a pooled embedding is:

* **Q, K and V are one matrix product** with the three weights stacked per step
  (``torch.cat``; the gradient flows back to the three ``nn.Linear`` weights). One pass over
  the input instead of three, and in the backward one larger product instead of three.
* **No dead work in the last layer for [CLS] pooling.** With ``cls_only`` the last layer
  computes keys and values for every token (the [CLS] query attends to them) but the query,
  the attention output, its projection, both LayerNorms and the feed-forward only for
  position 0: the other positions of the last layer are never read by a ``cls`` /
  ``cls_before_pooler`` pooler. In MiniLM's 6 layers that is about a sixth of the encoder's
  matrix work; in BERT-base's 12, about a twelfth.

Dropout is the same: one independent Bernoulli mask per element at the model's rates, on the
embeddings (inside the backbone's embedding module), the attention probabilities and the two
residual branches. Positions that are not computed draw no mask, which does not change the
distribution of the ones that are. At dropout 0 the outputs equal transformers' to float
rounding (``tests/test_train_forward.py``, forward and gradients, padded and unpadded).

Anything else (other architectures, relative position embeddings, decoders, cross-attention,
chunked feed-forward, gradient checkpointing, ``output_hidden_states`` poolers) runs through
the backbone's own ``forward``: :func:`lean_unsupported` says why.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LEAN_MODEL_TYPES: tuple[str, ...] = ("bert", "roberta")


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
    flag = "is_activation_checkpointing" if hasattr(type(backbone), "is_activation_checkpointing") \
        else "is_gradient_checkpointing"
    if getattr(backbone, flag, False):
        return "gradient checkpointing"
    impl = getattr(config, "_attn_implementation", None)
    if impl not in (None, "sdpa", "eager"):
        return f"attention implementation {impl!r}"
    encoder = getattr(backbone, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if getattr(backbone, "embeddings", None) is None or layers is None or len(layers) == 0:
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
    ctx = F.scaled_dot_product_attention(
        _split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads),
        attn_mask=mask, dropout_p=attn.dropout.p if training else 0.0)
    n, _, length, d = ctx.shape
    ctx = ctx.transpose(1, 2).reshape(n, length, heads * d)
    out = layer.attention.output
    h = F.dropout(out.dense(ctx), out.dropout.p, training)
    x = _layer_norm(h + residual, out.LayerNorm)
    inner = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(x))
    out = layer.output
    h = F.dropout(out.dense(inner), out.dropout.p, training)
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
    kwargs = {"input_ids": input_ids}
    if token_type_ids is not None:
        kwargs["token_type_ids"] = token_type_ids
    x = backbone.embeddings(**kwargs)
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


__all__ = ["LEAN_MODEL_TYPES", "lean_last_hidden", "lean_unsupported"]

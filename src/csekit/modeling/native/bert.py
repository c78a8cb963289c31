"""An inference-only BERT / RoBERTa encoder in plain torch, for fast evaluation.

``csekit eval`` and ``csekit encode`` spend their time in two places this module removes or
shortens: importing ``transformers``' modelling code (about 4 s of a fresh process on a small
CPU) and the encoder's forward pass. The forward here computes exactly what ``BertModel`` /
``RobertaModel`` compute in eval mode (same operations, same order: word + token-type, then
+ position, LayerNorm; per layer Q/K/V, scaled dot-product attention, output dense + residual +
LayerNorm, feed-forward + residual + LayerNorm; pooler ``tanh(dense(h[:, 0]))``), with three
changes that do not change the maths:

* Q, K and V are one matrix product with the three weights stacked (one pass over the input).
* On the CPU in fp32 (no autocast) the linear layers run through oneDNN with the bias, the
  activation and the residual addition fused into the product
  (:mod:`csekit.modeling.native.cpu_fastpath`; off with ``CSEKIT_CPU_FASTPATH=0``); elsewhere they
  are ``F.linear`` + the same ops.
* A batch without padding (the common case once sentences are sorted by length) runs attention
  without a mask.

It has no dropout and no gradients: it is for inference only (``Encoder.from_pretrained(...,
backend="native")``; training and saving use the Hugging Face model). Anything it does not
cover (other architectures, relative position embeddings, custom code, mixed-dtype
checkpoints) raises :class:`NativeUnsupported`, and ``backend="auto"`` then falls back to
``transformers``. Tests compare it with ``transformers`` layer by layer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from csekit.modeling.native.cpu_fastpath import fastpath_enabled, native_fastpath_available

SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("bert", "roberta")
# transformers' ACT2FN names -> how we compute them ("gelu" there is the exact erf GELU).
_ACTIVATIONS: dict[str, str] = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}


class NativeUnsupported(Exception):
    """The model is outside what the native encoder covers; ``str(err)`` says why."""


@dataclass(frozen=True)
class NativeConfig:
    """The fields of a BERT-family ``config.json`` that the forward pass needs."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    max_position_embeddings: int
    type_vocab_size: int
    pad_token_id: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NativeConfig:
        mtype = d.get("model_type")
        if mtype not in SUPPORTED_MODEL_TYPES:
            raise NativeUnsupported(
                f"model_type {mtype!r} (native covers {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        if d.get("auto_map"):
            raise NativeUnsupported("the model ships custom code (auto_map)")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise NativeUnsupported(f"position_embedding_type {d['position_embedding_type']!r}")
        if d.get("is_decoder") or d.get("add_cross_attention"):
            raise NativeUnsupported("decoder / cross-attention configuration")
        act = d.get("hidden_act", "gelu")
        if act not in _ACTIVATIONS:
            raise NativeUnsupported(f"hidden_act {act!r}")
        try:
            cfg = cls(
                model_type=str(mtype),
                vocab_size=int(d["vocab_size"]),
                hidden_size=int(d["hidden_size"]),
                num_hidden_layers=int(d["num_hidden_layers"]),
                num_attention_heads=int(d["num_attention_heads"]),
                intermediate_size=int(d["intermediate_size"]),
                hidden_act=str(act),
                layer_norm_eps=float(d.get("layer_norm_eps", 1e-12)),
                max_position_embeddings=int(d.get("max_position_embeddings", 512)),
                type_vocab_size=int(d.get("type_vocab_size", 2)),
                pad_token_id=int(d.get("pad_token_id") or 0),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise NativeUnsupported(f"config field missing or malformed: {err}") from err
        if cfg.hidden_size % cfg.num_attention_heads:
            raise NativeUnsupported("hidden_size is not a multiple of num_attention_heads")
        return cfg


@dataclass
class NativeOutput:
    """What ``Encoder.forward`` reads from a backbone's output (the HF attribute names)."""

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None
    hidden_states: tuple[torch.Tensor, ...] | None


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.contiguous(), requires_grad=False)


class _Layer(nn.Module):
    def __init__(self, t: dict[str, torch.Tensor], p: str) -> None:
        super().__init__()
        a = p + "attention."
        self.qkv_weight = _param(
            torch.cat([t[a + f"self.{n}.weight"] for n in ("query", "key", "value")])
        )
        self.qkv_bias = _param(
            torch.cat([t[a + f"self.{n}.bias"] for n in ("query", "key", "value")])
        )
        self.attn_out_weight = _param(t[a + "output.dense.weight"])
        self.attn_out_bias = _param(t[a + "output.dense.bias"])
        self.ln1_weight = _param(t[a + "output.LayerNorm.weight"])
        self.ln1_bias = _param(t[a + "output.LayerNorm.bias"])
        self.ffn_in_weight = _param(t[p + "intermediate.dense.weight"])
        self.ffn_in_bias = _param(t[p + "intermediate.dense.bias"])
        self.ffn_out_weight = _param(t[p + "output.dense.weight"])
        self.ffn_out_bias = _param(t[p + "output.dense.bias"])
        self.ln2_weight = _param(t[p + "output.LayerNorm.weight"])
        self.ln2_bias = _param(t[p + "output.LayerNorm.bias"])


def _linear_act(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, act: str, fast: bool
) -> torch.Tensor:
    """act(x @ w.T + b) for act in none | gelu | gelu_tanh | relu."""
    if fast:
        if act == "none":
            return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
        if act == "relu":
            return torch.ops.mkldnn._linear_pointwise(x, w, b, "relu", [], "")
        return torch.ops.mkldnn._linear_pointwise(
            x, w, b, "gelu", [], "tanh" if act == "gelu_tanh" else "none"
        )
    y = F.linear(x, w, b)
    if act == "gelu":
        return F.gelu(y)
    if act == "gelu_tanh":
        return F.gelu(y, approximate="tanh")
    if act == "relu":
        return F.relu(y)
    return y


def _linear_add(
    x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor, b: torch.Tensor, fast: bool
) -> torch.Tensor:
    """x @ w.T + b + residual."""
    if fast:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, w, b, "add")
    return F.linear(x, w, b) + residual


def _dense_add_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    ln_w: torch.Tensor,
    ln_b: torch.Tensor,
    eps: float,
    fast: bool,
) -> torch.Tensor:
    """LayerNorm(x @ w.T + b + residual): the output step of BERT's two sublayers."""
    y = _linear_add(x, residual, w, b, fast)
    return F.layer_norm(y, (y.shape[-1],), ln_w, ln_b, eps)


class NativeEncoderModel(nn.Module):
    """BERT / RoBERTa encoder stack for inference; weights from a HF checkpoint's tensors.

    Call it like ``BertModel``: ``model(input_ids=, attention_mask=, token_type_ids=,
    output_hidden_states=)``. Shape: input_ids (B, L) -> last_hidden_state (B, L, H).
    """

    def __init__(
        self, config: NativeConfig, tensors: dict[str, torch.Tensor], *, has_pooler: bool
    ) -> None:
        super().__init__()
        self.config = config
        e = "embeddings."
        self.word_embeddings = _param(tensors[e + "word_embeddings.weight"])
        self.position_embeddings = _param(tensors[e + "position_embeddings.weight"])
        self.token_type_embeddings = _param(tensors[e + "token_type_embeddings.weight"])
        self.emb_ln_weight = _param(tensors[e + "LayerNorm.weight"])
        self.emb_ln_bias = _param(tensors[e + "LayerNorm.bias"])
        self.layers = nn.ModuleList(
            _Layer(tensors, f"encoder.layer.{i}.") for i in range(config.num_hidden_layers)
        )
        self.pooler: nn.Module | None = None
        if has_pooler:
            self.pooler = nn.Module()
            self.pooler.weight = _param(tensors["pooler.dense.weight"])
            self.pooler.bias = _param(tensors["pooler.dense.bias"])
        self._act = _ACTIVATIONS[config.hidden_act]
        self.eval()

    def train(self, mode: bool = True) -> NativeEncoderModel:
        if mode:
            raise RuntimeError(
                "the native encoder is for inference only (it has no dropout); "
                "load the model with backend='hf' to train it"
            )
        return super().train(False)

    def _use_fastpath(self, x: torch.Tensor) -> bool:
        """oneDNN fused linears: CPU, fp32, no autocast, unless CSEKIT_CPU_FASTPATH=0."""
        return (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and fastpath_enabled()
            and self.word_embeddings.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and native_fastpath_available()
        )

    def _embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
               position_ids: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        seq = input_ids.shape[1]
        x = F.embedding(input_ids, self.word_embeddings)
        if token_type_ids is None:
            x = x + self.token_type_embeddings[0]  # transformers' default: all type 0
        else:
            x = x + F.embedding(token_type_ids, self.token_type_embeddings)
        if position_ids is not None:  # explicit ids (prompt template states), as transformers
            x = x + F.embedding(position_ids, self.position_embeddings)
        elif cfg.model_type == "roberta":
            # fairseq positions: padding_idx + 1, 2, ... over non-pad tokens, padding_idx on pads
            keep = input_ids.ne(cfg.pad_token_id).int()
            positions = (torch.cumsum(keep, dim=1).type_as(keep) * keep).long() + cfg.pad_token_id
            x = x + F.embedding(positions, self.position_embeddings)
        else:
            if seq > cfg.max_position_embeddings:
                raise ValueError(
                    f"sequence of {seq} tokens exceeds max_position_embeddings "
                    f"{cfg.max_position_embeddings}"
                )
            x = x + self.position_embeddings[:seq]
        return F.layer_norm(
            x, (cfg.hidden_size,), self.emb_ln_weight, self.emb_ln_bias, cfg.layer_norm_eps
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        position_ids: torch.Tensor | None = None,
    ) -> NativeOutput:
        if self.training:  # pragma: no cover - train() refuses already
            raise RuntimeError("the native encoder is for inference only")
        cfg = self.config
        bsz, seq = input_ids.shape
        hid, heads = cfg.hidden_size, cfg.num_attention_heads
        x = self._embed(input_ids, token_type_ids, position_ids)
        fast = self._use_fastpath(x)
        mask: torch.Tensor | None = None
        if attention_mask is not None and (
            x.device.type != "cpu" or not bool(attention_mask.all())
        ):
            mask = attention_mask.to(torch.bool)[:, None, None, :]
        h = x.reshape(bsz * seq, hid)
        states: list[torch.Tensor] = [x] if output_hidden_states else []
        eps = cfg.layer_norm_eps
        for layer in self.layers:
            qkv = _linear_act(h, layer.qkv_weight, layer.qkv_bias, "none", fast)
            q, k, v = qkv.view(bsz, seq, 3, heads, hid // heads).permute(2, 0, 3, 1, 4).unbind(0)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            a = a.transpose(1, 2).reshape(bsz * seq, hid)
            h = _dense_add_norm(
                a,
                h,
                layer.attn_out_weight,
                layer.attn_out_bias,
                layer.ln1_weight,
                layer.ln1_bias,
                eps,
                fast,
            )
            f = _linear_act(h, layer.ffn_in_weight, layer.ffn_in_bias, self._act, fast)
            h = _dense_add_norm(
                f,
                h,
                layer.ffn_out_weight,
                layer.ffn_out_bias,
                layer.ln2_weight,
                layer.ln2_bias,
                eps,
                fast,
            )
            if output_hidden_states:
                states.append(h.view(bsz, seq, hid))
        last = h.view(bsz, seq, hid)
        pooled = None
        if self.pooler is not None:
            pooled = torch.tanh(F.linear(last[:, 0], self.pooler.weight, self.pooler.bias))
        return NativeOutput(last, pooled, tuple(states) if output_hidden_states else None)


# ---------------------------------------------------------------------------------- loading
def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = folder / "model.safetensors"
    if single.is_file():
        return load_file(str(single))
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        raise NativeUnsupported(f"no safetensors weights in {folder}")
    try:
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (ValueError, KeyError, AttributeError) as err:
        raise NativeUnsupported(f"unreadable {index.name}: {err}") from err
    out: dict[str, torch.Tensor] = {}
    for shard in shards:
        out.update(load_file(str(folder / shard)))
    return out


def _base_model_tensors(raw: dict[str, torch.Tensor], model_type: str) -> dict[str, torch.Tensor]:
    """Keys of the bare encoder: strip the ``bert.`` / ``roberta.`` prefix of checkpoints saved
    with a head (as transformers does) and map legacy LayerNorm ``gamma``/``beta`` names."""
    probe = "embeddings.word_embeddings.weight"
    if probe in raw:
        prefix = ""
    elif f"{model_type}.{probe}" in raw:
        prefix = f"{model_type}."
    else:
        raise NativeUnsupported("checkpoint has no embeddings.word_embeddings.weight")
    out: dict[str, torch.Tensor] = {}
    for key, t in raw.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix) :]
        if key.endswith(".gamma"):
            key = key[:-6] + ".weight"
        elif key.endswith(".beta"):
            key = key[:-5] + ".bias"
        out[key] = t
    return out


def _required_keys(cfg: NativeConfig) -> list[str]:
    keys = [
        f"embeddings.{n}"
        for n in (
            "word_embeddings.weight",
            "position_embeddings.weight",
            "token_type_embeddings.weight",
            "LayerNorm.weight",
            "LayerNorm.bias",
        )
    ]
    per_layer = [
        f"attention.self.{n}.{p}" for n in ("query", "key", "value") for p in ("weight", "bias")
    ]
    per_layer += [
        f"{m}.{p}"
        for m in (
            "attention.output.dense",
            "attention.output.LayerNorm",
            "intermediate.dense",
            "output.dense",
            "output.LayerNorm",
        )
        for p in ("weight", "bias")
    ]
    for i in range(cfg.num_hidden_layers):
        keys += [f"encoder.layer.{i}.{k}" for k in per_layer]
    return keys


def read_json_object(path: Path, text: str | None = None) -> dict[str, Any]:
    """A JSON object from a model folder (``text``: the file's contents, if already read),
    or NativeUnsupported saying why not."""
    try:
        data = json.loads(path.read_text(encoding="utf-8") if text is None else text)
    except (OSError, ValueError) as err:
        raise NativeUnsupported(f"cannot read {path.name}: {err}") from err
    if not isinstance(data, dict):
        raise NativeUnsupported(f"{path.name} is not a JSON object")
    return data


def read_native_config(folder: Path) -> NativeConfig:
    return NativeConfig.from_dict(read_json_object(folder / "config.json"))


def load_native_encoder(folder: str | Path) -> tuple[NativeEncoderModel, bool]:
    """Build the native encoder from a Hugging Face model folder.

    Returns the model and whether the checkpoint holds trained pooler weights (as
    ``transformers`` reports through its missing keys). Raises NativeUnsupported.
    """
    folder = Path(folder)
    cfg = read_native_config(folder)
    tensors = _base_model_tensors(_read_tensors(folder), cfg.model_type)
    missing = [k for k in _required_keys(cfg) if k not in tensors]
    if missing:
        raise NativeUnsupported(f"{len(missing)} encoder weights missing, e.g. {missing[0]}")
    dtypes = {t.dtype for k, t in tensors.items() if t.is_floating_point()}
    if len(dtypes) != 1:
        raise NativeUnsupported(f"mixed weight dtypes {sorted(map(str, dtypes))}")
    # Computed in the precision asked for (fp32, or autocast on top), not the stored one.
    tensors = {k: t.float() if t.is_floating_point() else t for k, t in tensors.items()}
    shapes = {
        "embeddings.word_embeddings.weight": (cfg.vocab_size, cfg.hidden_size),
        "encoder.layer.0.intermediate.dense.weight": (cfg.intermediate_size, cfg.hidden_size),
    }
    for key, shape in shapes.items():
        if tuple(tensors[key].shape) != shape:
            raise NativeUnsupported(
                f"{key} has shape {tuple(tensors[key].shape)}, config says {shape}"
            )
    has_pooler = "pooler.dense.weight" in tensors and "pooler.dense.bias" in tensors
    return NativeEncoderModel(cfg, tensors, has_pooler=has_pooler), has_pooler


__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "NativeConfig",
    "NativeEncoderModel",
    "NativeOutput",
    "NativeUnsupported",
    "load_native_encoder",
    "read_native_config",
]

"""The sentence-transformers folder layout: describe a csekit pooling as built-in ST modules,
and read an ST ``modules.json`` back into a csekit pooling.

Only modules that ship with sentence-transformers are written, so ``SentenceTransformer(path)``
loads the folder without ``trust_remote_code``:

* ``cls_before_pooler`` -> Transformer, Pooling(cls)
* ``avg``               -> Transformer, Pooling(mean)
* ``last``              -> Transformer, Pooling(lasttoken) (the tokenizer saved with the model
  appends the EOS token itself, :mod:`csekit.modeling.representation.last_token`)
* ``avg_first_last`` / ``avg_top2`` -> Transformer (config ``output_hidden_states=true``),
  WeightedLayerPooling (weight 1 on the two layers, 0 elsewhere), Pooling(mean)
* a head used at evaluation (csekit MLP with ``mlp="always"``, or a raw BERT's own pooler for
  ``cls``) -> an extra Dense(H, H, Tanh) module after the pooling.

An instruction (prefix) becomes sentence-transformers' default prompt
(``config_sentence_transformers.json``: ``prompts`` and ``default_prompt_name``), which it
prepends to every text as csekit does.

The exception is ``prompt`` (PromptBERT) and ``prompteol`` (PromptEOL), which sentence-transformers cannot express with its
own modules (no template, no mask-token pooling): module 0 is then
``csekit_prompt.CsekitPromptTransformer``, a subclass of its Transformer shipped in the folder
as ``csekit_prompt.py`` (:mod:`csekit.modeling.saved.st_prompt_module`) with the template as token
ids in ``csekit_prompt.json``; loading needs ``SentenceTransformer(path,
trust_remote_code=True)`` (sentence-transformers >= 6 requires it for any module outside its
own namespace, local folders included).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from csekit.errors import ModelLoadError

_ST = "sentence_transformers.models."
_TANH = "torch.nn.modules.activation.Tanh"
PROMPT_MODULE_FILE = "csekit_prompt.py"
PROMPT_MODULE_TYPE = "csekit_prompt.CsekitPromptTransformer"
PROMPT_CONFIG_FILE = "csekit_prompt.json"
INSTRUCTION_PROMPT = "instruction"  # the name of the default prompt an instruction is saved as


def layer_weights(pooler: str, num_layers: int) -> list[float]:
    """WeightedLayerPooling weights over hidden_states[0..num_layers] for a two-layer average."""
    w = [0.0] * (num_layers + 1)
    if pooler == "avg_first_last":
        w[1] += 1.0
        w[num_layers] += 1.0
    elif pooler == "avg_top2":
        w[num_layers - 1] += 1.0
        w[num_layers] += 1.0
    else:
        raise ValueError(pooler)
    return w


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def write_st_modules(
    root: Path,
    *,
    eval_pooler: str,
    hidden_size: int,
    num_layers: int,
    max_seq_len: int,
    head_state: dict[str, torch.Tensor] | None,
    versions: dict[str, str],
    normalize: bool = False,
    prompt: dict[str, Any] | None = None,
    instruction: str | None = None,
) -> None:
    """Write modules.json and the module sub-folders for the evaluation pooling.

    ``eval_pooler`` is one of cls_before_pooler, avg, avg_first_last, avg_top2, last (the token
    pooling) or ``prompt`` (PromptBERT and PromptEOL; then ``prompt`` is the token-level template description that
    ``csekit_prompt.json`` stores); ``head_state`` (``dense.weight``, ``dense.bias``) adds a
    Dense+Tanh after it; ``instruction`` is written as the default prompt. The Transformer
    module itself (config, weights, tokenizer) is written by
    the caller at root.
    """
    modules: list[dict[str, Any]] = [
        {"idx": 0, "name": "0", "path": "",
         "type": PROMPT_MODULE_TYPE if eval_pooler == "prompt" else _ST + "Transformer"}
    ]
    _write_json(root / "sentence_bert_config.json",
                {"max_seq_length": int(max_seq_len), "do_lower_case": False})

    def add(kind: str) -> Path:
        idx = len(modules)
        sub = f"{idx}_{kind}"
        modules.append({"idx": idx, "name": str(idx), "path": sub, "type": _ST + kind})
        (root / sub).mkdir(parents=True, exist_ok=True)
        return root / sub

    if eval_pooler == "prompt":
        if prompt is None:
            raise ValueError("the prompt pooler needs its template description")
        src = Path(__file__).with_name("st_prompt_module.py")
        (root / PROMPT_MODULE_FILE).write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
        _write_json(root / PROMPT_CONFIG_FILE, prompt)
    if eval_pooler in ("avg_first_last", "avg_top2"):
        cfg_path = root / "config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg["output_hidden_states"] = True
        _write_json(cfg_path, cfg)
        sub = add("WeightedLayerPooling")
        _write_json(sub / "config.json", {"word_embedding_dimension": hidden_size,
                                          "layer_start": 0, "num_hidden_layers": num_layers})
        weights = torch.tensor(layer_weights(eval_pooler, num_layers), dtype=torch.float32)
        save_file({"layer_weights": weights}, str(sub / "model.safetensors"))
    mode = {"cls_before_pooler": "cls", "last": "lasttoken"}.get(eval_pooler, "mean")
    if eval_pooler != "prompt":
        sub = add("Pooling")
        _write_json(sub / "config.json", {
            "word_embedding_dimension": hidden_size,
            "pooling_mode_cls_token": mode == "cls",
            "pooling_mode_mean_tokens": mode == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_lasttoken": mode == "lasttoken",
        })
    if head_state is not None:
        sub = add("Dense")
        _write_json(sub / "config.json", {"in_features": hidden_size, "out_features": hidden_size,
                                          "bias": True, "activation_function": _TANH})
        save_file({"linear.weight": head_state["dense.weight"].detach().float().cpu().contiguous(),
                   "linear.bias": head_state["dense.bias"].detach().float().cpu().contiguous()},
                  str(sub / "model.safetensors"))
    if normalize:
        add("Normalize")
    _write_json(root / "modules.json", modules)
    _write_json(root / "config_sentence_transformers.json", {
        "__version__": versions,
        "prompts": {INSTRUCTION_PROMPT: instruction} if instruction else {},
        "default_prompt_name": INSTRUCTION_PROMPT if instruction else None,
        "similarity_fn_name": "cosine",
    })


@dataclass
class StPooling:
    """What an ST folder's modules say about pooling."""

    transformer_dir: Path
    pooler: str         # cls_before_pooler | avg | avg_first_last | avg_top2 | last | prompt
    head_state: dict[str, torch.Tensor] | None
    normalize: bool
    max_seq_len: int | None
    instruction: str | None = None    # the default prompt (prepended to every text)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot read {path}: {err}") from err


def _pooling_mode(cfg: dict[str, Any], path: Path) -> str:
    mode = cfg.get("pooling_mode")
    if mode is None:
        modes = [m for m in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens",
                             "weightedmean_tokens", "lasttoken") if cfg.get(f"pooling_mode_{m}")]
        mode = modes[0] if len(modes) == 1 else modes
    if isinstance(mode, list):
        mode = mode[0] if len(mode) == 1 else "+".join(mode)
    mode = {"cls_token": "cls", "mean_tokens": "mean"}.get(mode, mode)
    pooler = {"cls": "cls_before_pooler", "mean": "avg", "lasttoken": "last"}.get(mode)
    if pooler is None:
        raise ModelLoadError(f"{path}: pooling mode {mode!r} is not supported by csekit "
                             "(cls, mean or lasttoken)")
    if cfg.get("include_prompt") is False:
        raise ModelLoadError(f"{path}: pooling without the prompt tokens (include_prompt: "
                             "false) is not supported by csekit")
    return pooler


def _detect_layer_pooler(weights: list[float], start: int, path: Path) -> str:
    full = [0.0] * start + [float(w) for w in weights]
    n = len(full) - 1
    nz = [i for i, w in enumerate(full) if w != 0.0]
    if len(nz) == 2 and full[nz[0]] == full[nz[1]]:
        if nz == [1, n]:
            return "avg_first_last"
        if nz == [n - 1, n]:
            return "avg_top2"
    raise ModelLoadError(f"{path}: layer weights {weights} (start {start}) are not a pooling csekit knows")


def read_st_modules(root: Path) -> StPooling:
    """Parse ``root/modules.json`` into a csekit pooling; unknown modules are an error."""
    modules = _read_json(root / "modules.json")
    if not isinstance(modules, list) or not modules:
        raise ModelLoadError(f"{root / 'modules.json'}: expected a non-empty list of modules")
    transformer_dir: Path | None = None
    pooler: str | None = None
    layer_pooler: str | None = None
    head: dict[str, torch.Tensor] | None = None
    normalize = False
    max_seq_len: int | None = None
    for m in sorted(modules, key=lambda m: int(m.get("idx", 0))):
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        sub = (root / str(m.get("path", ""))).resolve()
        if not sub.is_relative_to(root.resolve()):
            raise ModelLoadError(f"{root / 'modules.json'}: module path {m.get('path')!r} leaves the folder")
        if kind == "CsekitPromptTransformer" and transformer_dir is None:
            transformer_dir, pooler = sub, "prompt"
        elif kind == "Transformer" and transformer_dir is None:
            transformer_dir = sub
            cfg_file = sub / "sentence_bert_config.json"
            if cfg_file.is_file():
                max_seq_len = _read_json(cfg_file).get("max_seq_length")
        elif kind == "WeightedLayerPooling" and pooler is None:
            cfg = _read_json(sub / "config.json")
            if not (sub / "model.safetensors").is_file():
                raise ModelLoadError(f"{sub}: layer weights must be in model.safetensors")
            w = load_file(str(sub / "model.safetensors"))["layer_weights"].tolist()
            layer_pooler = _detect_layer_pooler(w, int(cfg.get("layer_start", 0)), sub)
        elif kind == "Pooling" and pooler is None:
            pooler = _pooling_mode(_read_json(sub / "config.json"), sub)
            if layer_pooler is not None:
                if pooler != "avg":
                    raise ModelLoadError(f"{sub}: layer pooling must be followed by mean pooling")
                pooler = layer_pooler
        elif kind == "Dense" and pooler is not None and head is None:
            cfg = _read_json(sub / "config.json")
            act = str(cfg.get("activation_function", ""))
            if not act.endswith("Tanh") or cfg.get("in_features") != cfg.get("out_features"):
                raise ModelLoadError(f"{sub}: only a square Dense with Tanh is supported by csekit")
            if not (sub / "model.safetensors").is_file():
                raise ModelLoadError(f"{sub}: Dense weights must be in model.safetensors")
            st = load_file(str(sub / "model.safetensors"))
            if "linear.bias" not in st:
                raise ModelLoadError(f"{sub}: Dense without bias is not supported by csekit")
            head = {"dense.weight": st["linear.weight"], "dense.bias": st["linear.bias"]}
        elif kind == "Normalize":
            normalize = True
        else:
            raise ModelLoadError(f"{root / 'modules.json'}: module {m.get('type')!r} is not supported by csekit")
    if transformer_dir is None or pooler is None:
        raise ModelLoadError(f"{root / 'modules.json'}: needs a Transformer and a Pooling module")
    return StPooling(transformer_dir, pooler, head, normalize,
                     int(max_seq_len) if max_seq_len else None, default_prompt(root))


def default_prompt(root: Path) -> str | None:
    """The prompt sentence-transformers prepends by default (``default_prompt_name``), if any."""
    path = root / "config_sentence_transformers.json"
    if not path.is_file():
        return None
    cfg = _read_json(path)
    name = cfg.get("default_prompt_name")
    prompt = (cfg.get("prompts") or {}).get(name) if name else None
    return str(prompt) if prompt else None

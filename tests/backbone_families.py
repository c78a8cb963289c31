"""Tiny random models (width 32, 2 layers) of every backbone family csekit is tested on, built
from transformers' configs with a real tokenizer each (not a test module).

Encoders reuse bert-mini's WordPiece tokenizer, RoBERTa / XLM-R a byte-level BPE trained here on
the wiki corpus (as ``tests/test_prompt.py`` does). Decoders get a BPE with an EOS token that is
also the pad token: ``qwen3`` as Qwen's tokenizer (no BOS, no EOS appended, *left* padding as
Qwen3-Embedding ships it), ``llama`` and ``gemma3_text`` as Llama-3's (a BOS template,
``<|end_of_text|>`` as EOS and pad, right padding).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

ENCODERS = ("bert", "roberta", "modernbert", "deberta-v2", "xlm-roberta", "mpnet", "electra",
            "albert")
DECODERS = ("qwen3", "llama", "gemma3_text")
FAMILIES = ENCODERS + DECODERS
# Families whose config ships dropout 0 everywhere (training needs --dropout).
NO_DROPOUT = ("modernbert", "albert", "qwen3", "llama", "gemma3_text")
WIDTH = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
         "intermediate_size": 64}


def _bpe(lines: list[str], specials: list[str]) -> tuple[Any, dict[str, int], list[tuple[str, str]]]:
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(lines, vocab_size=600, min_frequency=2, special_tokens=specials)
    spec = json.loads(bpe._tokenizer.to_str())
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in spec["model"]["merges"]]
    return bpe, spec["model"]["vocab"], merges


class FamilyBuilder:
    """Builds (once) and saves each family's tiny model as a plain Hugging Face folder."""

    def __init__(self, root: Path, bert_mini: Path, wiki: Path) -> None:
        self.root = root
        self.bert_mini = bert_mini
        self.lines = wiki.read_text(encoding="utf-8").splitlines()[:2000]
        self._toks: dict[str, Any] = {}
        self._dirs: dict[str, Path] = {}

    def tokenizer(self, kind: str) -> Any:
        if kind not in self._toks:
            self._toks[kind] = getattr(self, f"_tok_{kind}")()
        return self._toks[kind]

    def _tok_wordpiece(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.bert_mini))

    def _tok_roberta(self) -> Any:
        from transformers import RobertaTokenizer

        _, vocab, merges = _bpe(self.lines, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        return RobertaTokenizer(vocab=vocab, merges=merges)

    def _tok_qwen(self) -> Any:
        from transformers import Qwen2Tokenizer

        _, vocab, merges = _bpe(self.lines, ["<|endoftext|>"])
        return Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|endoftext|>",
                              pad_token="<|endoftext|>", unk_token=None, bos_token=None,
                              padding_side="left")

    def _tok_llama(self) -> Any:
        from tokenizers import Tokenizer, processors
        from transformers import PreTrainedTokenizerFast

        bpe, _, _ = _bpe(self.lines, ["<|begin_of_text|>", "<|end_of_text|>"])
        tok = Tokenizer.from_str(bpe._tokenizer.to_str())
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
            special_tokens=[("<|begin_of_text|>", bos)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                       eos_token="<|end_of_text|>", pad_token="<|end_of_text|>")

    def config(self, family: str, **overrides: Any) -> Any:
        from transformers import CONFIG_MAPPING

        kind = {"roberta": "roberta", "xlm-roberta": "roberta", "qwen3": "qwen",
                "llama": "llama", "gemma3_text": "llama"}.get(family, "wordpiece")
        tok = self.tokenizer(kind)
        kw: dict[str, Any] = {**WIDTH, "vocab_size": len(tok), "max_position_embeddings": 128,
                              "pad_token_id": tok.pad_token_id}
        if family in ("roberta", "xlm-roberta"):
            kw.update(max_position_embeddings=130, type_vocab_size=1)
        elif family in ("electra", "albert"):
            kw.update(embedding_size=16)
        elif family == "deberta-v2":
            kw.update(relative_attention=True, position_buckets=16, pos_att_type=["p2c", "c2p"])
        elif family == "modernbert":
            kw.update(cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id,
                      bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                      local_attention=16, global_attn_every_n_layers=2)
        elif family in DECODERS:
            kw.update(num_key_value_heads=1, head_dim=16, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.bos_token_id)
            if family == "gemma3_text":
                kw.update(sliding_window=8, query_pre_attn_scalar=16,
                          layer_types=["sliding_attention", "full_attention"])
        kw.update(overrides)
        return CONFIG_MAPPING[family](**kw), tok

    def build(self, family: str, name: str | None = None, **overrides: Any) -> Path:
        """The folder of ``family``'s tiny model (``overrides``: config changes, under ``name``)."""
        key = name or family
        if key not in self._dirs:
            from transformers import AutoModel

            cfg, tok = self.config(family, **overrides)
            out = self.root / key
            torch.manual_seed(0)
            AutoModel.from_config(cfg).save_pretrained(str(out), safe_serialization=True)
            tok.save_pretrained(str(out))
            self._dirs[key] = out
        return self._dirs[key]


def dropout_sites(model: torch.nn.Module) -> dict[str, float]:
    """Every dropout rate a built model uses: each ``nn.Dropout``'s p and each module's float
    ``*dropout*`` attribute (attention modules keep their rate as a float). The oracle of the
    knob table: it reads the model, not the config."""
    out: dict[str, float] = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Dropout):
            out[name] = float(m.p)
        for attr, value in vars(m).items():
            if "dropout" in attr and isinstance(value, float):
                out[f"{name}.{attr}"] = value
    return out

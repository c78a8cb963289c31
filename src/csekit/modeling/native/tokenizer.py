"""BERT WordPiece tokenisation straight from the ``tokenizers`` library, for fast evaluation.

``transformers.AutoTokenizer`` costs about 2 s of imports in a fresh process before it
tokenises anything. For BERT-style WordPiece tokenizers this module builds the same
``tokenizers`` pipeline that ``transformers`` (5.x) builds for ``BertTokenizer`` - the
vocabulary and added tokens of the folder's ``tokenizer.json``; a ``BertNormalizer`` from
``tokenizer_config.json``'s ``do_lower_case`` / ``strip_accents`` / ``tokenize_chinese_chars``;
the BERT pre-tokenizer; ``[CLS] A [SEP]`` post-processing - and calls it the same way
(truncation to ``max_length`` from the right, no padding unless asked).

Only folders whose files leave no doubt qualify: anything else (other tokenizer classes, extra
special tokens, a ``special_tokens_map.json`` that disagrees, a non-default WordPiece) raises
:class:`~csekit.modeling.native.bert.NativeUnsupported` and ``backend="auto"`` uses
``transformers``. Tests compare the token ids with ``AutoTokenizer`` on every STS sentence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from csekit.modeling.native.bert import NativeUnsupported, read_json_object

_BERT_CLASSES = ("BertTokenizer", "BertTokenizerFast")
_SPECIAL_KEYS = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_DEFAULT_SPECIALS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
_NO_LIMIT = int(1e30)  # transformers' VERY_LARGE_INTEGER: "no model_max_length given"


def _content(tok: Any) -> str | None:
    if tok is None or isinstance(tok, str):
        return tok
    if isinstance(tok, dict) and isinstance(tok.get("content"), str):
        return tok["content"]
    raise NativeUnsupported(f"unrecognised special token entry {tok!r}")


class WordPieceTokenizer:
    """The subset of a ``transformers`` tokenizer's call interface that csekit's inference uses.

    ``tok(texts, truncation=True, max_length=N, padding=False|True|"longest",
    return_token_type_ids=..., return_attention_mask=..., return_tensors=None|"pt")``.
    """

    model_input_names: ClassVar[tuple[str, ...]] = ("input_ids", "token_type_ids", "attention_mask")

    def __init__(
        self, backend: Any, *, pad_token_id: int, model_max_length: int, source: str,
        specials: dict[str, str | None] | None = None,
    ) -> None:
        self._tok = backend
        self._specials = dict(specials or {})
        self.pad_token_id = pad_token_id
        self.model_max_length = model_max_length
        self.name_or_path = source

    @classmethod
    def from_folder(cls, folder: str | Path) -> WordPieceTokenizer:
        """Raises NativeUnsupported when the folder is not a plain BERT WordPiece tokenizer."""
        from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors

        folder = Path(folder)
        tj, tc = folder / "tokenizer.json", folder / "tokenizer_config.json"
        if not tj.is_file() or not tc.is_file():
            raise NativeUnsupported("tokenizer.json or tokenizer_config.json missing")
        conf = read_json_object(tc)
        if conf.get("tokenizer_class") not in _BERT_CLASSES:
            raise NativeUnsupported(f"tokenizer_class {conf.get('tokenizer_class')!r}")
        if conf.get("auto_map"):
            raise NativeUnsupported("the tokenizer ships custom code (auto_map)")
        if conf.get("additional_special_tokens") or conf.get("extra_special_tokens"):
            raise NativeUnsupported("extra special tokens")
        if conf.get("do_basic_tokenize", True) is not True or conf.get("never_split"):
            raise NativeUnsupported("non-default basic tokenisation")
        if conf.get("truncation_side", "right") != "right":
            raise NativeUnsupported("truncation from the left")
        specials = {k: _content(conf.get(k, _DEFAULT_SPECIALS[k])) for k in _SPECIAL_KEYS}
        stm = folder / "special_tokens_map.json"
        if stm.is_file():
            for key, val in read_json_object(stm).items():
                if key in _SPECIAL_KEYS and _content(val) != specials[key]:
                    raise NativeUnsupported(f"special_tokens_map.json disagrees on {key}")
                if key not in _SPECIAL_KEYS:
                    raise NativeUnsupported(f"special_tokens_map.json has {key}")
        try:
            tj_text = tj.read_text(encoding="utf-8")  # parsed here, and by tokenizers below
        except (OSError, ValueError) as err:
            raise NativeUnsupported(f"cannot read {tj.name}: {err}") from err
        spec = read_json_object(tj, tj_text)
        model = spec.get("model") or {}
        if (
            model.get("type") != "WordPiece"
            or model.get("continuing_subword_prefix", "##") != "##"
            or model.get("max_input_chars_per_word", 100) != 100
            or model.get("unk_token") != specials["unk_token"]
        ):
            raise NativeUnsupported("tokenizer.json is not a default BERT WordPiece model")
        added = {a.get("content"): a.get("id") for a in spec.get("added_tokens") or []}
        decoder = conf.get("added_tokens_decoder") or {}
        for tid, entry in decoder.items():
            if added.get(_content(entry)) != int(tid):
                raise NativeUnsupported(
                    f"added token {_content(entry)!r} differs from tokenizer.json"
                )
        for a in spec.get("added_tokens") or []:
            if not a.get("special") or a.get("content") not in specials.values():
                raise NativeUnsupported(
                    f"added token {a.get('content')!r} is not a BERT special token"
                )
        for key, val in specials.items():
            if val is not None and val not in added:
                raise NativeUnsupported(
                    f"{key} {val!r} is not an added special token in tokenizer.json"
                )

        backend = Tokenizer.from_str(tj_text)
        ids = {k: backend.token_to_id(v) for k, v in specials.items() if v is not None}
        if ids.get("cls_token") is None or ids.get("sep_token") is None:
            raise NativeUnsupported("[CLS]/[SEP] not in the vocabulary")
        backend.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=bool(conf.get("tokenize_chinese_chars", True)),
            strip_accents=conf.get("strip_accents"),
            lowercase=bool(conf.get("do_lower_case", True)),
        )
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        cls_t, sep_t = specials["cls_token"], specials["sep_token"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls_t}:0 $A:0 {sep_t}:0",
            pair=f"{cls_t}:0 $A:0 {sep_t}:0 $B:1 {sep_t}:1",
            special_tokens=[(cls_t, ids["cls_token"]), (sep_t, ids["sep_token"])],
        )
        backend.no_padding()
        backend.no_truncation()
        limit = conf.get("model_max_length")
        max_len = (
            int(limit) if isinstance(limit, (int, float)) and 0 < limit < _NO_LIMIT else _NO_LIMIT
        )
        return cls(
            backend,
            pad_token_id=int(ids.get("pad_token") or 0),
            model_max_length=max_len,
            source=str(folder),
            specials=specials,
        )

    def __call__(
        self,
        texts: list[str] | str,
        *,
        truncation: bool = False,
        max_length: int | None = None,
        padding: bool | str = False,
        return_token_type_ids: bool = True,
        return_attention_mask: bool = True,
        return_tensors: str | None = None,
        add_special_tokens: bool = True,
    ) -> dict[str, Any]:
        if isinstance(texts, str):
            texts = [texts]
        if padding not in (False, True, "longest", "do_not_pad"):
            raise ValueError(f"padding={padding!r} is not supported by the native tokenizer")
        if return_tensors not in (None, "pt"):
            raise ValueError(
                f"return_tensors={return_tensors!r} is not supported by the native tokenizer"
            )
        if truncation:
            limit = max_length if max_length is not None else self.model_max_length
            if limit < _NO_LIMIT:
                self._tok.enable_truncation(int(limit))
            else:
                self._tok.no_truncation()
        else:
            self._tok.no_truncation()
        encs = self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        ids = [e.ids for e in encs]
        out: dict[str, Any] = {"input_ids": ids}
        if return_token_type_ids:
            out["token_type_ids"] = [e.type_ids for e in encs]
        pad = padding in (True, "longest")
        if pad and ids:
            width = max(map(len, ids))
            out["input_ids"] = [x + [self.pad_token_id] * (width - len(x)) for x in ids]
            if return_token_type_ids:
                out["token_type_ids"] = [x + [0] * (width - len(x)) for x in out["token_type_ids"]]
            if return_attention_mask:
                out["attention_mask"] = [[1] * len(x) + [0] * (width - len(x)) for x in ids]
        elif return_attention_mask:
            out["attention_mask"] = [[1] * len(x) for x in ids]
        if return_tensors == "pt":
            if not pad and len({len(x) for x in ids}) > 1:
                raise ValueError("sequences of different lengths need padding=True for tensors")
            out = {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
        return out

    @property
    def mask_token(self) -> str | None:
        return self._specials.get("mask_token")

    @property
    def mask_token_id(self) -> int | None:
        tok = self.mask_token
        return self._tok.token_to_id(tok) if tok is not None else None

    def save_pretrained(self, *_: Any, **__: Any) -> None:
        raise RuntimeError(
            "the native tokenizer is for inference only; load the model with "
            "backend='hf' to save it"
        )


__all__ = ["WordPieceTokenizer"]

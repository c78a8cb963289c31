"""Prompt-based sentence embeddings (PromptBERT, Jiang et al. 2022).

The sentence is placed in a template with a sentence slot ``[X]`` and a mask slot ``[MASK]``,
e.g. ``This sentence of "[X]" means[MASK].``, and its embedding is the last-layer hidden state
at the mask token. ``[MASK]`` stands for the tokenizer's own mask token (``[MASK]`` for BERT,
``<mask>`` for RoBERTa); the model's literal mask token is accepted too.

Tokenisation (:class:`BoundTemplate`): the template's text before the slot, the sentence and
the text after the slot are tokenised separately (without special tokens) and concatenated
between the tokenizer's own special tokens (``[CLS] ... [SEP]`` / ``<s> ... </s>``). So:

* only the sentence is ever truncated: ``max_seq_len`` counts the *sentence's* tokens, as in
  PromptBERT's training code (``encode(s)[:max_seq_length]``, template added after), and the
  whole row is further bounded by the model's position limit; the template and the mask are
  never cut;
* whitespace that precedes ``[X]`` in the template is given to the sentence (byte-level BPE
  attaches a space to the following word), so for RoBERTa the row is token for token the
  tokenisation of the whole string, as PromptBERT's evaluation builds it;
* the mask position is known from the template, not searched for, so a sentence that contains
  the literal text ``[MASK]`` cannot move it.

Evaluation rule (PromptBERT ``evaluation.py``): a ``.`` is appended to a non-empty sentence
whose last character is not one of ``.?"'``. Training does not append it (PromptBERT's
training code does not).

Template denoising (:func:`template_states`, PromptBERT ``--mask_embedding_sentence_delta``,
used by ClusterNS-prompt too): from the mask state of each row, subtract the mask state of the
*same template with an empty sentence*, whose position ids after the slot are shifted by the
sentence's token count n, so every template token keeps the position it has in the real row.
In PromptBERT's training code these states are recomputed in every forward pass, in train mode
(their own dropout), with gradient (``delta_freeze`` off by default); one state per (template,
n) is shared by all rows with that length. csekit does the same (``denoise_grad``), but runs
only the (template, n) pairs present in the batch instead of all n < 50.

Position ids of the template-only rows: BERT numbers positions 0, 1, ...; RoBERTa (fairseq)
numbers them from ``pad_token_id + 1``. PromptBERT's code passes ``arange(L)`` explicitly for
both, so for RoBERTa its template states sit two positions earlier than the real rows.
``positions="model"`` (default) uses the model's own numbering, shifted;
``positions="reference"`` reproduces PromptBERT's 0-based ids. For BERT the two are the same.

PromptEOL (Jiang et al. 2023, pooler ``prompteol``), the decoder analogue: the template has no
mask slot (``This sentence : "[X]" means in one word:"``) and the embedding is the hidden state
of the template's last token, the position that, in a causal decoder, has read the sentence and
the "in one word" cue. Its template is one for every view, and it does not denoise unless asked.
The pieces are tokenised separately as above, so where the sentence's last character and the
text after the slot would merge into one byte-level BPE token in the whole string (``."``),
the row keeps them apart (the saved sentence-transformers module does the same).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from csekit.errors import ConfigError
from csekit.modeling.representation.prompt_denoise import template_inputs, template_states

SLOT = "[X]"
MASK_SLOT = "[MASK]"
PERIOD_EXEMPT = ".?\"'"
POSITION_MODES: tuple[str, ...] = ("model", "reference")
# Models whose absolute positions start at pad_token_id + 1 (fairseq numbering).
FAIRSEQ_POSITION_TYPES = frozenset({"roberta", "xlm-roberta", "camembert", "xlm-roberta-xl",
                                    "data2vec-text", "longformer", "mpnet"})

# PromptBERT's unsupervised templates (run.sh: unsup-bert / unsup-roberta), written out. Its
# ``..._means*mask*.`` leaves no space before the mask; its RoBERTa template puts spaces inside
# the quotes (``'_*sent_0*_'`` -> ``' [X] '``).
DEFAULT_TEMPLATES: dict[str, tuple[str, str]] = {
    "bert": ('This sentence of "[X]" means[MASK].', 'This sentence : "[X]" means[MASK].'),
    "roberta": ("This sentence : ' [X] ' means[MASK].", "The sentence : ' [X] ' means[MASK]."),
}
# PromptEOL's template (Jiang et al. 2023), one for every view; pooled at its last token.
PROMPTEOL_TEMPLATES: tuple[str, ...] = ('This sentence : "[X]" means in one word:"',)


def template_family(model_type: str | None, mask_token: str | None) -> str:
    """``roberta`` for fairseq-style models / ``<mask>`` tokenizers, else ``bert``."""
    if (model_type or "") in FAIRSEQ_POSITION_TYPES or mask_token == "<mask>":
        return "roberta"
    return "bert"


def add_period(sentence: str) -> str:
    """PromptBERT's evaluation rule: append '.' unless the sentence ends in one of ``.?"'``."""
    if sentence and sentence[-1] not in PERIOD_EXEMPT:
        return sentence + "."
    return sentence


@dataclass(frozen=True)
class PromptConfig:
    """How the ``prompt`` pooler builds and denoises its inputs (saved in csekit.json).

    Attributes:
        templates: view templates (view 1 uses the first, every later view the second); empty
            means the model family's PromptBERT defaults (T1, T2), or PromptEOL's template for
            ``last_token``. One template: all views.
        last_token: PromptEOL: templates without a mask slot, pooled at their last token.
        denoise: training subtracts each row's template state (PromptBERT / ClusterNS); None:
            on for mask templates, off for ``last_token`` (PromptEOL does not denoise).
        eval_denoise: evaluation subtracts it too (PromptBERT's unsupervised test does not; its
            supervised one does).
        eval_period: evaluation appends '.' by PromptBERT's rule.
        denoise_grad: gradient flows through the template states (PromptBERT's default).
        positions: ``model`` or ``reference`` position ids for template states (see module doc).
    """

    templates: tuple[str, ...] = ()
    denoise: bool | None = None
    eval_denoise: bool = False
    eval_period: bool = True
    denoise_grad: bool = True
    positions: str = "model"
    last_token: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "templates", tuple(self.templates or ()))
        if len(self.templates) > 2:
            raise ConfigError(f"at most two prompt templates (T1, T2), got {len(self.templates)}")
        for t in self.templates:
            check_template_text(t, last_token=self.last_token)
        if self.positions not in POSITION_MODES:
            raise ConfigError(f"unknown prompt position mode {self.positions!r}; choose one of "
                              f"{', '.join(POSITION_MODES)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["templates"] = list(self.templates)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> PromptConfig:
        d = dict(d or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown prompt settings: {', '.join(unknown)}")
        return cls(**{**d, "templates": tuple(d.get("templates") or ())})


def check_template_text(text: Any, mask_token: str | None = None, *,
                        last_token: bool = False) -> None:
    """A template has exactly one ``[X]`` and exactly one mask slot (none with ``last_token``:
    PromptEOL pools its last token)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"a prompt template must be a non-empty string, got {text!r}")
    if text.count(SLOT) != 1:
        raise ConfigError(f"prompt template {text!r} must contain the sentence slot {SLOT} once")
    literal = [mask_token] if mask_token else ["<mask>"]
    masks = text.count(MASK_SLOT) + sum(text.count(m) for m in literal if m != MASK_SLOT)
    if last_token and masks:
        raise ConfigError(f"prompteol template {text!r} must not contain a mask slot: its "
                          "embedding is the template's last token (use --pooler prompt)")
    if not last_token and masks != 1:
        raise ConfigError(f"prompt template {text!r} must contain the mask slot {MASK_SLOT} once")


def _call(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return list(tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                          return_token_type_ids=False)["input_ids"])


def special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The tokenizer's special tokens before and after a single text ([CLS] / [SEP], <s> / </s>)."""
    probe = "a"
    with_sp = list(tokenizer([probe], return_attention_mask=False,
                             return_token_type_ids=False)["input_ids"][0])
    bare = _call(tokenizer, [probe])[0]
    for i in range(len(with_sp) - len(bare) + 1):
        if with_sp[i:i + len(bare)] == bare:
            return with_sp[:i], with_sp[i + len(bare):]
    raise ConfigError("cannot tell the tokenizer's special tokens apart from the text")


@dataclass
class BoundTemplate:
    """A template tokenised for one tokenizer.

    A row is ``head + prefix + sentence[:budget] + suffix + tail`` (head/tail: special tokens).
    """

    text: str
    head: list[int]
    prefix: list[int]
    suffix: list[int]
    tail: list[int]
    sentence_space: bool  # the sentence is tokenised with a leading space
    mask_from_end: bool   # the mask is after the slot (counted from the row's end) or before it
    mask_offset: int      # from_end: len(row) - offset; else: offset

    @classmethod
    def bind(cls, text: str, tokenizer: Any, *, last_token: bool = False) -> BoundTemplate:
        """``last_token``: a PromptEOL template, pooled at its last token (before the special
        tokens that end a row)."""
        mask_token = getattr(tokenizer, "mask_token", None)
        mask_id = getattr(tokenizer, "mask_token_id", None)
        if last_token:
            check_template_text(text, mask_token, last_token=True)
            before, after = text.split(SLOT)
            space = before != before.rstrip()
            head, tail = special_frame(tokenizer)
            prefix, suffix = _call(tokenizer, [before.rstrip(), after])
            return cls(text, head, prefix, suffix, tail, space, True, len(tail) + 1)
        if not mask_token or mask_id is None:
            raise ConfigError("the prompt pooler needs a tokenizer with a mask token (a decoder "
                              "LLM has none: use --pooler prompteol)")
        check_template_text(text, mask_token)
        filled = text.replace(MASK_SLOT, mask_token)
        before, after = filled.split(SLOT)
        space = before != before.rstrip()
        before = before.rstrip()
        head, tail = special_frame(tokenizer)
        prefix, suffix = _call(tokenizer, [before, after])
        n_mask = prefix.count(mask_id) + suffix.count(mask_id)
        if n_mask != 1:
            raise ConfigError(f"prompt template {text!r} gives {n_mask} mask tokens after "
                              "tokenisation; it must give exactly one")
        if mask_id in suffix:
            from_end, offset = True, len(suffix) - suffix.index(mask_id) + len(tail)
        else:
            from_end, offset = False, len(head) + prefix.index(mask_id)
        return cls(text, head, prefix, suffix, tail, space, from_end, offset)

    @property
    def length(self) -> int:
        """Tokens of the template alone (the row of an empty sentence)."""
        return len(self.head) + len(self.prefix) + len(self.suffix) + len(self.tail)

    @property
    def slot_start(self) -> int:
        """Index of the first sentence token in a row."""
        return len(self.head) + len(self.prefix)

    def empty_ids(self) -> list[int]:
        return self.head + self.prefix + self.suffix + self.tail

    def mask_index(self, row_length: int) -> int:
        return row_length - self.mask_offset if self.mask_from_end else self.mask_offset

    def sentence_text(self, sentence: str, period: bool) -> str:
        s = sentence.strip()
        if period:
            s = add_period(s)
        # (an empty sentence keeps its space too, as in the whole string "' ' means")
        return (" " + s) if self.sentence_space else s

    def rows(self, sentences: Sequence[str], budget: int, *, period: bool,
             tokenizer: Any) -> list[list[int]]:
        """Token ids of each sentence in this template; the sentence cut to ``budget`` tokens."""
        if budget < 0:
            raise ConfigError(f"no room for the sentence in prompt template {self.text!r}")
        texts = [self.sentence_text(s, period) for s in sentences]
        ids = _call(tokenizer, texts) if texts else []
        pre, post = self.head + self.prefix, self.suffix + self.tail
        return [pre + x[:budget] + post for x in ids]


class PromptPooling:
    """The prompt pooler of an Encoder: its settings, templates bound to the tokenizer, pooling.

    Not an ``nn.Module``: it has no parameters; the backbone is passed to it per call.
    """

    def __init__(self, config: PromptConfig, tokenizer: Any, *, model_type: str | None,
                 pad_token_id: int | None, max_positions: int) -> None:
        self.config = config
        family = template_family(model_type, getattr(tokenizer, "mask_token", None))
        defaults = PROMPTEOL_TEMPLATES if config.last_token else DEFAULT_TEMPLATES[family]
        self.templates: tuple[str, ...] = config.templates or defaults
        self.bound = [BoundTemplate.bind(t, tokenizer, last_token=config.last_token)
                      for t in self.templates]
        # (None: PromptBERT denoises its mask templates; PromptEOL does not)
        self.denoise = config.denoise if config.denoise is not None else not config.last_token
        self.tokenizer = tokenizer
        self.max_positions = int(max_positions)
        fairseq = (model_type or "") in FAIRSEQ_POSITION_TYPES
        self.position_offset = (int(pad_token_id or 0) + 1) if (fairseq and config.positions == "model") else 0
        self.model_position_offset = (int(pad_token_id or 0) + 1) if fairseq else 0
        for b in self.bound:
            if b.length >= self.max_positions:
                raise ConfigError(f"prompt template {b.text!r} ({b.length} tokens) leaves no room "
                                  f"in the model's {self.max_positions} positions")
        self._tables: dict[torch.device, dict[str, torch.Tensor]] = {}

    @classmethod
    def for_backbone(cls, config: PromptConfig | None, tokenizer: Any,
                     backbone_config: Any) -> PromptPooling:
        """The prompt pooler of a backbone with this ``transformers`` config."""
        c = backbone_config
        return cls(config or PromptConfig(), tokenizer, model_type=getattr(c, "model_type", None),
                   pad_token_id=getattr(c, "pad_token_id", None),
                   max_positions=int(getattr(c, "max_position_embeddings", 0) or 512))

    def pool_with(self, backbone: Any, last_hidden: torch.Tensor, attention_mask: torch.Tensor,
                  prompt_template: torch.Tensor | None, *, training: bool) -> torch.Tensor:
        """:meth:`pool` with the template states from ``backbone`` (a transformers model),
        denoised as the settings say for training or evaluation."""
        def run(ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            # (always with the mask: without one, transformers >= 5.25 reads the jump in the
            # position ids after the slot as a boundary between packed sequences)
            return backbone(input_ids=ids, attention_mask=mask, position_ids=positions,
                            return_dict=True).last_hidden_state

        cfg = self.config
        denoise = self.denoise if training else cfg.eval_denoise
        return self.pool(last_hidden, attention_mask, prompt_template, denoise=denoise, run=run,
                         grad=cfg.denoise_grad)

    # ------------------------------------------------------------------ tokenisation
    def view_template(self, view: int) -> int:
        """Template index of view ``view`` (0: T1; 1, 2, ...: T2, or T1 when only one is set)."""
        return 0 if view == 0 else min(1, len(self.bound) - 1)

    def budget(self, template: int, max_seq_len: int | None) -> int:
        """Sentence tokens allowed in ``template``: ``max_seq_len``, within the position limit."""
        room = self.max_positions - self.model_position_offset - self.bound[template].length
        return room if not max_seq_len else min(int(max_seq_len), room)

    def encode_ids(self, sentences: Sequence[str], max_seq_len: int | None, *, template: int = 0,
                   period: bool = False) -> list[list[int]]:
        return self.bound[template].rows(sentences, self.budget(template, max_seq_len),
                                         period=period, tokenizer=self.tokenizer)

    def batch(self, sentences: Sequence[str], max_seq_len: int | None, *,
              templates: Sequence[int], period: bool = False) -> dict[str, torch.Tensor]:
        """Padded tensors; row i is ``sentences[i]`` in template ``templates[i]``.

        Shape: input_ids, attention_mask, prompt_template (B, L), (B, L), (B,).
        """
        if len(templates) != len(sentences):
            raise ValueError("one template index per sentence")
        rows: list[list[int]] = [[] for _ in sentences]
        for t in sorted(set(templates)):
            idx = [i for i, v in enumerate(templates) if v == t]
            for i, r in zip(idx, self.encode_ids([sentences[i] for i in idx], max_seq_len,
                                                 template=t, period=period)):
                rows[i] = r
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, :len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask,
                "prompt_template": torch.tensor(list(templates), dtype=torch.long)}

    def pairs(self, sentences: Sequence[str], max_seq_len: int | None) -> dict[str, torch.Tensor]:
        """Training pairs: rows 2i (view 1, T1) and 2i+1 (view 2, T2) are sentence i."""
        doubled = [s for s in sentences for _ in (0, 1)]
        views = [self.view_template(v) for _ in sentences for v in (0, 1)]
        return self.batch(doubled, max_seq_len, templates=views, period=False)

    def views(self, rows: Sequence[Sequence[str]], max_seq_len: int | None) -> dict[str, torch.Tensor]:
        """Supervised rows of n texts (sent0, sent1[, hard_neg]): row ``n*i + k`` is text k of
        example i in template :meth:`view_template` (k): the anchor in T1, the positive and the
        hard negative in T2 (T1 when only one template is set). That is PromptBERT's rule for a
        third sentence (its ``cl_forward`` denoises view 3 with T2's template state) and
        :func:`csekit.data.tokenize_views`' row layout.

        Shape: input_ids, attention_mask, prompt_template (n*B, L), (n*B, L), (n*B,).
        """
        if not rows:
            raise ValueError("no rows")
        n = len(rows[0])
        if n < 2 or any(len(r) != n for r in rows):
            raise ValueError(f"every row needs the same number (>= 2) of texts, got {n} first")
        flat = [text for row in rows for text in row]
        templates = [self.view_template(k) for _ in rows for k in range(n)]
        return self.batch(flat, max_seq_len, templates=templates, period=False)

    def st_config(self, max_seq_len: int | None) -> dict[str, Any]:
        """T1 as token ids for the sentence-transformers module (csekit_prompt.json)."""
        b = self.bound[0]
        pad = self.tokenizer.pad_token_id
        return {"template": b.text, "head": b.head, "prefix": b.prefix, "suffix": b.suffix,
                "tail": b.tail, "empty_ids": b.empty_ids(), "slot_start": b.slot_start,
                "mask_from_end": b.mask_from_end, "mask_offset": b.mask_offset,
                "sentence_space": b.sentence_space, "add_period": self.config.eval_period,
                "budget": self.budget(0, max_seq_len), "pad_token_id": int(pad or 0),
                "denoise": self.config.eval_denoise, "position_offset": self.position_offset}

    # ------------------------------------------------------------------ pooling
    def _table(self, device: torch.device) -> dict[str, torch.Tensor]:
        if device not in self._tables:
            b = self.bound
            self._tables[device] = {
                "from_end": torch.tensor([x.mask_from_end for x in b], device=device),
                "offset": torch.tensor([x.mask_offset for x in b], device=device),
                "length": torch.tensor([x.length for x in b], device=device),
            }
        return self._tables[device]

    def rows_info(self, attention_mask: torch.Tensor, prompt_template: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(template index, mask index, sentence token count) of each row (right padding).

        Shape: attention_mask (B, L) -> three (B,) long tensors.
        """
        dev = attention_mask.device
        tab = self._table(dev)
        t = prompt_template.to(dev) if prompt_template is not None else \
            torch.zeros(attention_mask.shape[0], dtype=torch.long, device=dev)
        lengths = attention_mask.sum(-1).long()
        pos = torch.where(tab["from_end"][t], lengths - tab["offset"][t], tab["offset"][t])
        return t, pos, lengths - tab["length"][t]

    def pool(self, last_hidden: torch.Tensor, attention_mask: torch.Tensor,
             prompt_template: torch.Tensor | None, *, denoise: bool,
             run: Callable[..., torch.Tensor] | None = None, grad: bool = False) -> torch.Tensor:
        """Mask-token states, minus the template states when ``denoise``.

        ``run(input_ids, attention_mask, position_ids) -> last hidden (U, L, H)`` runs the
        backbone for the template states. Shape: last_hidden (B, L, H) -> (B, H).
        """
        t, pos, n = self.rows_info(attention_mask, prompt_template)
        rows = torch.arange(last_hidden.shape[0], device=last_hidden.device)
        pooled = last_hidden[rows, pos]
        if denoise:
            if run is None:
                raise ValueError("denoising needs the backbone")
            pairs = torch.stack([t, n], 1)
            uniq, inverse = torch.unique(pairs, dim=0, return_inverse=True)
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                states = template_states(run, self, uniq[:, 0].tolist(), uniq[:, 1].tolist(),
                                         device=last_hidden.device)
            pooled = pooled - states.to(pooled.dtype)[inverse]
        return pooled


def prompt_pooling(pooler: str, config: PromptConfig | None, tokenizer: Any,
                   backbone_config: Any) -> PromptPooling | None:
    """The encoder's prompt pooler for ``pooler`` (``prompt``: PromptBERT, ``prompteol``:
    PromptEOL), None for the other poolers (which take no prompt settings)."""
    if pooler in ("prompt", "prompteol"):
        config = replace(config or PromptConfig(), last_token=pooler == "prompteol")
        return PromptPooling.for_backbone(config, tokenizer, backbone_config)
    if config is not None and config != PromptConfig():
        raise ConfigError("prompt templates / settings need --pooler prompt or prompteol")
    return None


__all__ = ["DEFAULT_TEMPLATES", "POSITION_MODES", "PROMPTEOL_TEMPLATES", "BoundTemplate",
           "PromptConfig", "PromptPooling", "add_period", "check_template_text", "prompt_pooling",
           "special_frame", "template_family", "template_inputs", "template_states"]

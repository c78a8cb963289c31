"""An instruction (prefix) in front of every sentence, as decoder embedding models use one
(e5-mistral ``Instruct: ...\\nQuery: ``, Qwen3-Embedding, LLM2Vec).

The prefix is text, joined to the sentence *before* tokenisation, exactly as
sentence-transformers' ``prompts`` do (csekit's saved folder names it as the default prompt, so
``SentenceTransformer(path).encode(s)`` prepends it too); truncation counts its tokens. It
applies to every text the encoder sees, in training and in evaluation (symmetric tasks such as
STS give both sentences the same instruction).

:class:`InstructedTokenizer` wraps the encoder's tokenizer, so every place that tokenises for
the encoder (training batches, ``encode``, the start checks) prepends the same prefix; every
other attribute is the wrapped tokenizer's own. It does not combine with the prompt poolers,
whose templates already place the sentence (put the instruction into the template).
"""

from __future__ import annotations

from typing import Any

from csekit.errors import ConfigError
from csekit.modeling.representation.last_token import ensure_eos


class InstructedTokenizer:
    """``tokenizer`` with ``instruction`` prepended to each text of a ``__call__``.

    Args:
        tokenizer: a ``transformers`` tokenizer (or csekit's native WordPiece tokenizer).
        instruction: the prefix, joined as it is (include any separator or trailing space).
    """

    def __init__(self, tokenizer: Any, instruction: str) -> None:
        if not isinstance(instruction, str) or not instruction:
            raise ConfigError(f"an instruction must be a non-empty string, got {instruction!r}")
        self.tokenizer = tokenizer
        self.instruction = instruction

    def __call__(self, text: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(text, str):
            text = self.instruction + text
        else:
            text = [self.instruction + t for t in text]
        return self.tokenizer(text, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in ("tokenizer", "instruction"):  # (not yet set: copy / unpickle)
            raise AttributeError(name)
        return getattr(self.tokenizer, name)

    def __repr__(self) -> str:
        return f"InstructedTokenizer({self.instruction!r}, {self.tokenizer!r})"


def with_instruction(tokenizer: Any, instruction: str | None) -> Any:
    """``tokenizer`` wrapped with ``instruction``; None keeps ``tokenizer`` as it is, ``""``
    unwraps it."""
    if instruction is None:
        return tokenizer
    base = bare_tokenizer(tokenizer)
    return InstructedTokenizer(base, instruction) if instruction else base


def bare_tokenizer(tokenizer: Any) -> Any:
    """The tokenizer under an :class:`InstructedTokenizer` (itself otherwise)."""
    return tokenizer.tokenizer if isinstance(tokenizer, InstructedTokenizer) else tokenizer


def instruction_of(tokenizer: Any) -> str | None:
    """The instruction a tokenizer prepends (None for a bare one)."""
    return tokenizer.instruction if isinstance(tokenizer, InstructedTokenizer) else None


def encoder_tokenizer(tokenizer: Any, *, pooler: str, instruction: str | None) -> Any:
    """The tokenizer an encoder with this pooler and instruction uses: EOS appended for
    ``last`` pooling (:func:`~csekit.modeling.representation.last_token.ensure_eos`, in place),
    wrapped with the instruction. ConfigError for an instruction with a prompt pooler."""
    if instruction and pooler in ("prompt", "prompteol"):
        raise ConfigError("an instruction does not combine with the prompt poolers: write it "
                          "into the template instead")
    if pooler == "last":
        ensure_eos(bare_tokenizer(tokenizer))
    return with_instruction(tokenizer, instruction)


__all__ = ["InstructedTokenizer", "bare_tokenizer", "encoder_tokenizer", "instruction_of",
           "with_instruction"]

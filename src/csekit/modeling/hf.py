"""Small helpers around ``transformers`` that both loading and saving use."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def library_versions() -> dict[str, str]:
    """Versions of the libraries a saved model depends on."""
    import transformers

    from csekit import __version__

    out = {"csekit": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import sentence_transformers

        out["sentence_transformers"] = sentence_transformers.__version__
    except ImportError:
        pass
    return out


def forward_accepts(module: nn.Module, name: str) -> bool:
    """Whether ``module.forward`` takes the keyword ``name`` (or any keyword)."""
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic forward
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def model_max_len(tokenizer: Any, config: Any) -> int:
    """The longest input both the tokenizer and the position table allow (512 if neither says)."""
    tok_max = int(getattr(tokenizer, "model_max_length", 0) or 0)
    pos_max = int(getattr(config, "max_position_embeddings", 0) or 0)
    candidates = [v for v in (tok_max, pos_max) if 0 < v < 100_000]
    return min(candidates) if candidates else 512


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No weight-loading progress bar / load report (csekit logs what matters itself)."""
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


__all__ = ["forward_accepts", "library_versions", "model_max_len", "quiet_transformers"]

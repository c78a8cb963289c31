"""The backbone's own pooler (BERT's Linear + Tanh) out of the module tree when no forward uses
it: not run, not a parameter (so no unused parameter under DDP), and put back for saving, so a
saved folder keeps the checkpoint's pooler weights."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

from torch import nn


class SparePooler:
    """Holds a backbone's detached pooler; :meth:`attach` and :meth:`for_saving` put it back."""

    def __init__(self) -> None:
        self._held: tuple[nn.Module, ...] = ()  # (a tuple: not a sub-module of the encoder)

    @property
    def held(self) -> bool:
        return bool(self._held)

    def detach(self, backbone: nn.Module) -> None:
        """Take the pooler out when the model class runs without one (``add_pooling_layer``)."""
        bp = getattr(backbone, "pooler", None)
        if not isinstance(bp, nn.Module):
            return
        try:  # models built with add_pooling_layer=False run without one (BERT, RoBERTa, ...)
            optional = "add_pooling_layer" in inspect.signature(type(backbone).__init__).parameters
        except (TypeError, ValueError):  # pragma: no cover - exotic model class
            optional = False
        if optional:
            self._held = (bp,)
            backbone.pooler = None

    def attach(self, backbone: nn.Module) -> None:
        """Put the pooler back for good (a forward now uses it), on the backbone's device."""
        if self._held and getattr(backbone, "pooler", None) is None:
            p = next(backbone.parameters())
            backbone.pooler = self._held[0].to(device=p.device, dtype=p.dtype)
            self._held = ()

    @contextlib.contextmanager
    def for_saving(self, backbone: nn.Module) -> Iterator[nn.Module]:
        """The backbone with its pooler weights in place (if they were detached)."""
        if not self._held:
            yield backbone
            return
        backbone.pooler = self._held[0]
        try:
            yield backbone
        finally:
            backbone.pooler = None


__all__ = ["SparePooler"]

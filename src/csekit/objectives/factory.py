"""Build an objective from its name and hyper-parameters (as read from a config)."""

from __future__ import annotations

import inspect
from typing import Any

from csekit.errors import ConfigError
from csekit.objectives.base import Objective
from csekit.objectives.clusterns import ClusterNS, ClusterNSFocal
from csekit.objectives.focal import FocalInfoNCE
from csekit.objectives.simcse import SimCSE

OBJECTIVES: dict[str, type[Objective]] = {
    "simcse": SimCSE,
    "focal": FocalInfoNCE,
    "clusterns": ClusterNS,
    "clusterns-focal": ClusterNSFocal,
}


def _allowed(cls: type[Objective]) -> list[str]:
    params = inspect.signature(
        ClusterNS.__init__ if cls is ClusterNSFocal else cls.__init__
    ).parameters
    names = [p for p in params if p not in ("self", "args", "kwargs")]
    return [n for n in names if not (cls is ClusterNSFocal and n == "loss")]


def build_objective(name: str, **hparams: Any) -> Objective:
    """``"simcse" | "focal" | "clusterns" | "clusterns-focal"`` with keyword hyper-parameters.

    Unknown names or options raise :class:`csekit.errors.ConfigError` naming what is allowed.
    """
    key = str(name).lower().replace("_", "-")
    if key not in OBJECTIVES:
        raise ConfigError(f"objective {name!r} is not known; choose one of {', '.join(OBJECTIVES)}")
    cls = OBJECTIVES[key]
    allowed = _allowed(cls)
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise ConfigError(
            f"option(s) {', '.join(unknown)} do not apply to objective {key!r}; "
            f"allowed: {', '.join(allowed)}"
        )
    return cls(**hparams)

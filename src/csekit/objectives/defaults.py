"""Each method's published defaults: the one table that ``csekit train`` fills unset options from.

The values are the published BERT-base settings (``csekit train``'s default model is
bert-base-uncased; ../shared/REFERENCE.md): SimCSE (Gao et al. 2021) batch 64 / lr 3e-5;
ClusterNS (Deng et al. 2023) batch 256 / lr 5e-5, k 128, kmeans_lr 1e-3, start cosine 0.4,
bml_weight 1e-3, alpha 0, beta 0.3; Focal-InfoNCE (Hou and Li 2023) m 0.3. Focal-InfoNCE's
BERT-base batch and learning rate are not published (only RoBERTa-base: 512 / 1e-5), so it
takes SimCSE's; ClusterNS + focal is csekit's own combination and takes ClusterNS's settings
plus Focal's m. Keys are :class:`csekit.training.TrainConfig` option names. Recipes for other
backbones set their own values explicitly.

The objective classes' own keyword defaults (``ClusterNS(bml_weight=1e-4, alpha=0.2,
beta=0.5)``) are the released code's argument defaults, which the paper's BERT-base run
overrode; library users who build an objective directly get those.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

_SIMCSE: dict[str, Any] = {"batch_size": 64, "learning_rate": 3e-5, "temperature": 0.05}
_CLUSTERNS: dict[str, Any] = {
    "batch_size": 256, "learning_rate": 5e-5, "temperature": 0.05, "n_clusters": 128,
    "kmeans_lr": 1e-3, "kmeans_start_cosine": 0.4, "bml_weight": 1e-3, "bml_alpha": 0.0,
    "bml_beta": 0.3,
}

PUBLISHED_DEFAULTS: MappingProxyType[str, MappingProxyType[str, Any]] = MappingProxyType({
    "simcse": MappingProxyType(dict(_SIMCSE)),
    "focal": MappingProxyType({**_SIMCSE, "margin": 0.3}),
    "clusterns": MappingProxyType(dict(_CLUSTERNS)),
    "clusterns-focal": MappingProxyType({**_CLUSTERNS, "margin": 0.3}),
})

# Options that only some objectives use get these values where the objective's row has none
# (so that a config always holds a number for every field).
FALLBACK_DEFAULTS: MappingProxyType[str, Any] = MappingProxyType({
    "margin": 0.3, "n_clusters": 128, "kmeans_lr": 1e-3, "kmeans_start_cosine": 0.4,
    "bml_weight": 1e-4, "bml_alpha": 0.2, "bml_beta": 0.5,
})


def objective_defaults(name: str) -> dict[str, Any]:
    """Every objective-dependent option's default for objective ``name`` (a fresh dict)."""
    return {**FALLBACK_DEFAULTS, **PUBLISHED_DEFAULTS[name]}


__all__ = ["FALLBACK_DEFAULTS", "PUBLISHED_DEFAULTS", "objective_defaults"]

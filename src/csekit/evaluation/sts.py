"""SentEval-exact STS evaluation (as SimCSE's evaluation runs it), each sentence encoded once.

Aggregation: STS12-16 report the "all" setting (cosine predictions and gold scores of all the
year's subsets concatenated, one Spearman); STS-B and SICK-R report Spearman on the test split
(``split="dev"``: STS-B dev and SICK-R trial); numbers are Spearman x 100; ``avg`` is their mean.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from csekit.errors import ConfigError, DataError
from csekit.evaluation.loaders import StsPairs, load_task, resolve_data_dir
from csekit.evaluation.metrics import alignment, pair_cosine, spearman, uniformity
from csekit.evaluation.tasks import DEV_TASKS, TASKS, canonical_task

logger = logging.getLogger(__name__)

EncodeFn = Callable[[list[str]], "np.ndarray | torch.Tensor"]
_SHORT = {"STSBenchmark": "STS-B", "SICKRelatedness": "SICK-R"}


@dataclass
class StsResult:
    """Spearman x 100 per task, their mean and the pair counts."""

    spearman: dict[str, float]
    avg: float
    n_pairs: dict[str, int]
    model: str | None = None
    pooler: str | None = None
    split: str = "test"
    subsets: dict[str, dict[str, float]] = field(default_factory=dict)
    align_uniform: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``csekit eval --output``; ``split`` / ``align_uniform`` only when used."""
        out: dict[str, Any] = {"spearman": dict(self.spearman), "avg": self.avg,
                               "n_pairs": dict(self.n_pairs), "model": self.model,
                               "pooler": self.pooler}
        if self.split != "test":
            out["split"] = self.split
        if self.align_uniform is not None:
            out["align_uniform"] = dict(self.align_uniform)
        return out

    def table(self) -> str:
        """A readable table: one column per task and ``Avg.``, Spearman x 100 to 2 decimals."""
        names = [_SHORT.get(t, t) for t in self.spearman] + ["Avg."]
        values = [f"{v:.2f}" for v in self.spearman.values()] + [f"{self.avg:.2f}"]
        widths = [max(len(n), len(v)) for n, v in zip(names, values)]
        sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
        row = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"
        lines = [sep, row(names), sep, row(values), sep]
        if self.align_uniform is not None:
            au = self.align_uniform
            lines.append(f"alignment {au['alignment']:.4f}  uniformity {au['uniformity']:.4f}  "
                         f"(STS-B {au['split']}: {au['n_positive']} pairs with gold > 4, "
                         f"{au['n_sentences']} sentences)")
        return "\n".join(lines)


def _as_array(emb: np.ndarray | torch.Tensor, n: int) -> np.ndarray:
    arr = emb.detach().float().cpu().numpy() if isinstance(emb, torch.Tensor) else np.asarray(emb)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ValueError(f"encode returned shape {arr.shape}, expected ({n}, d)")
    return arr


def evaluate_sts(
    encode: EncodeFn,
    data_dir: str | os.PathLike[str] | None,
    *,
    tasks: Sequence[str] | None = None,
    split: str = "test",
    align_uniform: bool = False,
    model: str | None = None,
    pooler: str | None = None,
) -> StsResult:
    """Evaluate an encoder on SentEval's STS tasks.

    Args:
        encode: maps a list of sentences to their embeddings, shape (N, d). Called ONCE, with
            every unique sentence of all requested tasks.
        data_dir: folder containing SentEval's ``downstream/`` (or that folder); None means
            ``$CSEKIT_DATA``.
        tasks: SentEval task names; default all 7 for ``test``, STS-B and SICK-R for ``dev``.
        split: ``test`` (paper numbers) or ``dev`` (STS-B dev, SICK-R trial: model selection).
        align_uniform: also compute alignment / uniformity on STS-B of the same split.
    """
    if split not in ("test", "dev"):
        raise ConfigError(f"unknown split {split!r}; use test or dev")
    names = [canonical_task(t) for t in (tasks if tasks is not None else
                                          (TASKS if split == "test" else DEV_TASKS))]
    names = list(dict.fromkeys(names))
    if not names:
        raise ConfigError("no STS task selected")
    downstream = resolve_data_dir(data_dir)
    data: dict[str, StsPairs] = {t: load_task(downstream, t, split) for t in names}
    stsb = data.get("STSBenchmark")
    if align_uniform and stsb is None:
        stsb = load_task(downstream, "STSBenchmark", split)

    index: dict[str, int] = {}
    for pairs in list(data.values()) + ([stsb] if stsb is not None else []):
        for s in pairs.sent1 + pairs.sent2:
            index.setdefault(s, len(index))
    sentences = list(index)
    logger.info("encoding %d unique sentences for %s", len(sentences), ", ".join(names))
    emb = _as_array(encode(sentences), len(sentences))
    if not np.isfinite(emb).all():
        raise DataError("the encoder produced NaN or infinite embeddings; the STS numbers "
                        "would be meaningless")

    scores: dict[str, float] = {}
    counts: dict[str, int] = {}
    subsets: dict[str, dict[str, float]] = {}
    for t in names:
        pairs = data[t]
        i1 = np.fromiter((index[s] for s in pairs.sent1), dtype=np.int64, count=len(pairs))
        i2 = np.fromiter((index[s] for s in pairs.sent2), dtype=np.int64, count=len(pairs))
        sys_scores = pair_cosine(emb[i1], emb[i2])
        gold = np.asarray(pairs.gold, dtype=np.float64)
        scores[t] = 100.0 * spearman(sys_scores, gold)
        counts[t] = len(pairs)
        if len(pairs.subsets) > 1:
            subsets[t] = {name: 100.0 * spearman(sys_scores[a:b], gold[a:b])
                          for name, a, b in pairs.subsets}
    au: dict[str, Any] | None = None
    if align_uniform and stsb is not None:
        au = _align_uniform(emb, index, stsb, split)
    avg = float(np.mean(list(scores.values())))
    return StsResult(scores, avg, counts, model=model, pooler=pooler, split=split,
                     subsets=subsets, align_uniform=au)


def _align_uniform(emb: np.ndarray, index: dict[str, int], stsb: StsPairs,
                   split: str) -> dict[str, Any]:
    """SimCSE's protocol: STS-B pairs with gold > 4 for alignment, all its sentences for
    uniformity (each unique sentence once)."""
    pos = [k for k, g in enumerate(stsb.gold) if g > 4.0]
    x = torch.from_numpy(emb[[index[stsb.sent1[k]] for k in pos]])
    y = torch.from_numpy(emb[[index[stsb.sent2[k]] for k in pos]])
    uniq = list(dict.fromkeys(stsb.sent1 + stsb.sent2))
    allx = torch.from_numpy(emb[[index[s] for s in uniq]])
    return {"alignment": alignment(x, y), "uniformity": uniformity(allx), "split": split,
            "n_positive": len(pos), "n_sentences": len(uniq)}

"""csekit's objectives as sentence-transformers losses (same code path, not a copy).

Each loss holds the ``SentenceTransformer`` (``self.model``, as sentence-transformers' own losses
do), an optional train-only MLP head (``self.head``, SimCSE's Linear + Tanh) and the csekit
:class:`~csekit.objectives.Objective` it runs (``self.objective``, built by
:func:`csekit.objectives.build_objective` from the same keyword hyper-parameters). ``forward``
embeds every column with the model (one forward pass per column, so the same sentence given as
anchor and positive gets two dropout masks), applies the head, and hands the embeddings to the
objective: ``objective(z1, z2)``, or ``objective(z1, z2, z3)`` with a third (hard-negative)
column.

What sentence-transformers' trainer does with these losses (checked against the installed
sentence-transformers 6.2 source, ``base/trainer.py``):

- it optimises ``loss.named_parameters()`` (``get_optimizer_cls_and_kwargs``), i.e. the model's
  parameters AND the head's, so the head is trained; it is not part of the model and is never
  saved with it (``SentenceTransformer.save`` writes only the model's modules);
- the centroids of ClusterNS are buffers of :class:`csekit.clustering.ClusterState`, not
  parameters, so no optimiser ever sees them; they live in ``loss.state_dict()``;
- its checkpoints hold the model only (``_save``): the head and the centroids are not in them.
  :class:`csekit.st.SentenceTransformerTrainer` adds them (``loss_state_dict``).

Multi-process: the objective gathers the embeddings of every process with gradient
(:func:`csekit.distributed.gather_with_grad`) and returns the loss of the GLOBAL batch, whose
gradient reaches only the local shard. DDP averages the model's gradients over processes, so the
returned loss carries ``world_size`` times the gradient (its value is unchanged), exactly what
csekit's own trainer does by multiplying before ``backward``. The head is not inside DDP (the
trainer wraps only the model), so its gradients are averaged across processes by a hook, and
its initial weights are broadcast from rank 0 on the first call.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from csekit import distributed as dist
from csekit.errors import ConfigError
from csekit.modeling.representation.pooling import MLPHead
from csekit.objectives import ObjectiveOutput, build_objective
from csekit.objectives.citations import citations_for

# Objective attribute holding each build_objective keyword (where the name differs or the
# value lives in the cluster state).
_CLUSTER_ATTRS = {"init": "init", "seed": "seed"}


def _embedding_dim(model: nn.Module) -> int:
    for name in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        fn = getattr(model, name, None)
        if callable(fn):
            dim = fn()
            if dim:
                return int(dim)
    raise ConfigError("cannot tell the model's embedding size; pass mlp=False or a "
                      "SentenceTransformer whose modules report it")


class CsekitLoss(nn.Module):
    """Base of the four losses: ``forward(sentence_features, labels) -> loss``.

    Args:
        model: the ``SentenceTransformer`` being trained.
        mlp: add SimCSE's train-only MLP head (Linear(d, d) + Tanh) on the sentence embedding.
            It is applied to every column in this loss and trained with the model, and it is
            never part of the saved model (SimCSE's ``mlp_only_train``: the model is used
            without it). ``True`` is the published unsupervised setting of all four methods
            (with [CLS] pooling); ``False`` trains the model's own embedding directly.
        **hparams: the keyword hyper-parameters of :func:`csekit.objectives.build_objective`
            for this objective (``temperature``, ``margin``, ``n_clusters``, ...). Their
            defaults are the objective classes' own, not ``csekit train``'s per-method table.

    Inputs:
        2 columns (anchor, positive), e.g. the same sentence twice for unsupervised training;
        a 3rd column (hard negative) is passed to the objective as ``z3`` where the installed
        csekit objectives take it. Labels are ignored.

    Shape:
        each column's ``sentence_embedding``: (b_local, d) -> scalar loss (global batch)
    """

    objective_name: ClassVar[str] = ""

    def __init__(self, model: nn.Module, *, mlp: bool = True, **hparams: Any) -> None:
        super().__init__()
        if not isinstance(mlp, bool):
            raise ConfigError(f"mlp must be True or False, got {mlp!r}")
        self.model = model
        self.objective = build_objective(self.objective_name, **hparams)
        self.head: MLPHead | None = MLPHead(_embedding_dim(model)) if mlp else None
        if self.head is not None:
            for p in self.head.parameters():
                p.register_hook(_average_across_processes)
        self._head_synced = False
        self._takes_z3 = "z3" in inspect.signature(self.objective.forward).parameters
        self.last_output: ObjectiveOutput | None = None  # stats of the last step, detached

    # ------------------------------------------------------------------ forward
    def embed(self, sentence_features: Iterable[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """The (post-head) embedding of each column. Shape: C columns -> C x (b_local, d)."""
        feats = list(sentence_features)
        if len(feats) not in (2, 3):
            raise ConfigError(f"{type(self).__name__} takes 2 columns (anchor, positive) or 3 "
                              f"(anchor, positive, hard negative), got {len(feats)}")
        embs = [self.model(f)["sentence_embedding"] for f in feats]
        if self.head is not None:
            self._sync_head_once()
            embs = [self.head(e) for e in embs]
        return embs

    def forward(self, sentence_features: Iterable[dict[str, torch.Tensor]],
                labels: torch.Tensor | None = None) -> torch.Tensor:
        embs = self.embed(sentence_features)
        return self.loss_from_embeddings(embs)

    def loss_from_embeddings(self, embs: list[torch.Tensor]) -> torch.Tensor:
        """Run the objective on (z1, z2[, z3]) and scale the gradient for DDP (value unchanged)."""
        if len(embs) == 3:
            if not self._takes_z3:
                raise ConfigError(f"{type(self).__name__}: a third (hard-negative) column needs "
                                  "csekit objectives with forward(z1, z2, z3); this csekit's "
                                  "take 2 columns")
            out = self.objective(embs[0], embs[1], embs[2])
        else:
            out = self.objective(embs[0], embs[1])
        self.last_output = ObjectiveOutput(out.loss.detach(), out.stats)
        loss = out.loss
        world = dist.world_size()
        if world > 1:
            # value: the global-batch loss; gradient: world_size x, so that DDP's average over
            # processes is the gradient of the single-process global-batch loss
            loss = loss + (world - 1) * (loss - loss.detach())
        return loss

    def _sync_head_once(self) -> None:
        if self._head_synced or self.head is None:
            return
        if dist.is_distributed():
            with torch.no_grad():
                for p in self.head.parameters():
                    dist.broadcast_(p.data, src=0)
        self._head_synced = True

    # ------------------------------------------------------------------ state
    def loss_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything of the loss that is not the model: the head's weights, the objective's
        buffers (ClusterNS: ``objective.clusters.centroids`` float32, ``...started``)."""
        out: dict[str, torch.Tensor] = {}
        for name, child in self.named_children():
            if name == "model":
                continue
            for key, value in child.state_dict().items():
                out[f"{name}.{key}"] = value
        return out

    def load_loss_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`loss_state_dict` (strict: a missing or extra key is an error)."""
        own = self.loss_state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ConfigError(
                f"{type(self).__name__}: the saved loss state does not fit this loss "
                f"(missing {missing or 'none'}, unexpected {unexpected or 'none'}); resume with "
                "the loss and options it was trained with")
        for name, child in self.named_children():
            if name == "model":
                continue
            prefix = name + "."
            child.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                   if k.startswith(prefix)})

    # ------------------------------------------------------------------ model card
    def get_config_dict(self) -> dict[str, Any]:
        """The effective hyper-parameters (defaults included), for the generated model card."""
        return {"objective": self.objective_name, "mlp": self.head is not None,
                **objective_config(self.objective)}

    @property
    def citation(self) -> str:
        return "\n".join(citations_for(self.objective_name))


def objective_config(objective: nn.Module) -> dict[str, Any]:
    """The build_objective keywords of ``objective`` with their effective values."""
    cls = type(objective)
    from csekit.objectives import ClusterNS, ClusterNSFocal

    init = ClusterNS.__init__ if cls is ClusterNSFocal else cls.__init__
    names = [n for n in inspect.signature(init).parameters
             if n not in ("self", "args", "kwargs")
             and not (cls is ClusterNSFocal and n == "loss")]
    out: dict[str, Any] = {}
    for n in names:
        if n in _CLUSTER_ATTRS and hasattr(objective, "clusters"):
            out[n] = getattr(objective.clusters, _CLUSTER_ATTRS[n])
        elif hasattr(objective, n):
            out[n] = getattr(objective, n)
    return out


def _average_across_processes(grad: torch.Tensor) -> torch.Tensor:
    """Gradient hook of the head (outside DDP): mean over processes, as DDP does for the model."""
    if not dist.is_distributed():
        return grad
    g = grad.detach().clone()
    dist.all_reduce_sum_(g)
    return g / dist.world_size()


class SimCSELoss(CsekitLoss):
    """Unsupervised SimCSE (Gao et al. 2021): InfoNCE on cos / T over the global batch, with
    the train-only MLP head. Hyper-parameters: ``temperature`` (0.05)."""

    objective_name = "simcse"


class FocalInfoNCELoss(CsekitLoss):
    """Focal-InfoNCE (Hou and Li 2023): positive logit s_ii^2 / T, negative logits
    (s_ij + m) s_ij / T. Hyper-parameters: ``temperature`` (0.05), ``margin`` m (0.3)."""

    objective_name = "focal"


class ClusterNSLoss(CsekitLoss):
    """ClusterNS (Deng et al. 2023): online K-means on the embeddings once the batch mean cosine
    falls to ``kmeans_start_cosine``; the second-nearest centroid is each sentence's hard
    negative, same-cluster in-batch sentences are held by the bidirectional margin loss.
    Hyper-parameters as :class:`csekit.objectives.ClusterNS` (``n_clusters`` <= global batch).
    The centroids are buffers (``objective.clusters``): use
    :class:`csekit.st.SentenceTransformerTrainer` to keep them in checkpoints."""

    objective_name = "clusterns"


class ClusterNSFocalLoss(CsekitLoss):
    """ClusterNS with a Focal-InfoNCE core (csekit's combination): the cluster hard negatives
    and the margin loss inside Focal-InfoNCE. Hyper-parameters as ClusterNSLoss plus ``margin``."""

    objective_name = "clusterns-focal"


LOSSES: dict[str, type[CsekitLoss]] = {
    cls.objective_name: cls
    for cls in (SimCSELoss, FocalInfoNCELoss, ClusterNSLoss, ClusterNSFocalLoss)
}

__all__ = ["LOSSES", "ClusterNSFocalLoss", "ClusterNSLoss", "CsekitLoss", "FocalInfoNCELoss",
           "SimCSELoss", "objective_config"]

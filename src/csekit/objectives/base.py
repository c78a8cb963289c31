"""The objective interface the trainer codes against."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from csekit.distributed import gather_with_grad
from csekit.losses.cosine import cosine_matrix


@dataclass
class ObjectiveOutput:
    """``loss``: scalar loss of the GLOBAL batch; ``stats``: numbers worth logging.

    A stat is a float or a detached 0-d tensor. Tensors stay on the device: the trainer reads
    them together with the loss in the step's one host synchronisation (a ``.item()`` per stat
    inside ``forward`` would stall a GPU several times a step). :meth:`stat_floats` reads them
    all at once for anyone else.
    """

    loss: torch.Tensor
    stats: dict[str, float | torch.Tensor] = field(default_factory=dict)

    def stat_floats(self) -> dict[str, float]:
        """Every stat as a Python float (one host synchronisation for all tensor stats)."""
        return read_scalars(self.stats)


def read_scalars(values: dict[str, float | torch.Tensor],
                 first: torch.Tensor | None = None) -> dict[str, float]:
    """Floats of ``values`` (floats, ints or 0-d tensors) with one ``.tolist()`` for the tensors.

    ``first``, a 0-d tensor, is read in the same synchronisation and returned under the key
    ``""`` (the trainer passes the loss).
    """
    items = ([("", first)] if first is not None else []) + list(values.items())
    items = [(k, v) for k, v in items if isinstance(v, (int, float))
             or (isinstance(v, torch.Tensor) and v.numel() == 1)]
    tensors = [v.detach().float().reshape(()) for _, v in items if isinstance(v, torch.Tensor)]
    read = iter(torch.stack([t.to(tensors[0].device) for t in tensors]).tolist() if tensors else [])
    return {k: next(read) if isinstance(v, torch.Tensor) else float(v) for k, v in items}


class Objective(nn.Module):
    """Base class: ``forward(z1, z2, z3=None) -> ObjectiveOutput``.

    ``z1`` and ``z2`` are the anchor and positive views of the LOCAL shard (post-MLP): the two
    dropout views of a sentence (unsupervised), or f(sent0) and f(sent1) (supervised NLI).
    ``z3``, when given, is the hard-negative view f(hard_neg), row i belonging to example i.
    The objective gathers all of them across processes itself (:func:`csekit.distributed.gather_with_grad`, the
    local shard keeping its gradient), so the loss is the loss of the global batch and is the
    same number on every process. Only the local shard carries gradient, so the trainer must
    multiply the loss by ``world_size`` before ``backward``: DDP's gradient averaging then gives
    exactly the gradient of the single-process global-batch loss.

    Shape:
        z1, z2, z3: (b_local, d), any float dtype (logits are computed in float32)
    """

    name: str = "objective"

    def gather(
        self, z1: torch.Tensor, z2: torch.Tensor, z3: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The global-batch views, each gathered with the local shard's gradient kept."""
        if z1.dim() != 2 or z1.shape != z2.shape or (z3 is not None and z3.shape != z1.shape):
            shapes = ", ".join(str(tuple(z.shape)) for z in (z1, z2, z3) if z is not None)
            raise ValueError(f"z1, z2 (and z3) must all be (B, d), got {shapes}")
        return gather_with_grad(z1), gather_with_grad(z2), \
            (gather_with_grad(z3) if z3 is not None else None)

    @staticmethod
    @torch.no_grad()
    def pair_stats(z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean positive cosine and mean off-diagonal (negative) cosine, as 0-d tensors.

        Shape: (B, d), (B, d) -> (), ().
        """
        s = cosine_matrix(z1.detach(), z2.detach())
        b = s.shape[0]
        pos = s.diagonal().mean()
        neg = (s.sum() - s.diagonal().sum()) / max(b * (b - 1), 1)
        return pos, neg

    @staticmethod
    @torch.no_grad()
    def triplet_stats(
        z1: torch.Tensor, z2: torch.Tensor, z3: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """``triplet_neg_cos`` (mean cos(z1_i, z3_i), own hard negative) and ``triplet_margin``
        (mean cos(z1_i, z2_i) - cos(z1_i, z3_i)); empty without z3. Shape: (B, d) each."""
        if z3 is None:
            return {}
        a = torch.nn.functional.normalize(z1.detach().float(), dim=-1)
        pos = (a * torch.nn.functional.normalize(z2.detach().float(), dim=-1)).sum(-1)
        neg = (a * torch.nn.functional.normalize(z3.detach().float(), dim=-1)).sum(-1)
        return {"triplet_neg_cos": neg.mean(), "triplet_margin": (pos - neg).mean()}


__all__ = ["Objective", "ObjectiveOutput", "read_scalars"]

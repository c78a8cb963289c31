"""Optional CPU fast path for fp32 inference: oneDNN linear layers with fused epilogues.

PyTorch's eager ``nn.Linear`` on the CPU first copies the broadcast bias into the output and
then runs the matrix product on top of it, and BERT's feed-forward block then makes another pass
for the GELU. oneDNN (``torch.ops.mkldnn._linear_pointwise``, the kernel ``torch.compile`` uses
on CPUs) does bias and exact-erf GELU inside the matrix product. The result is the same maths
(float32 throughout, same GELU), only fewer passes over memory.

The patch is temporary (instance-level ``forward`` overrides, removed on exit), used only by
``Encoder.encode`` in eval mode on the CPU in fp32, and only after a self-check on the running
build; anywhere else, or if the op is missing, nothing changes. The native backend
(:mod:`csekit.modeling.native.bert`) calls the same op directly, with the residual addition
fused as well, after :func:`native_fastpath_available` checks those variants.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


def fastpath_enabled() -> bool:
    """False when the user turned the fused path off with ``CSEKIT_CPU_FASTPATH=0``."""
    return os.environ.get("CSEKIT_CPU_FASTPATH", "1") != "0"


def _self_check(native_variants: bool) -> bool:
    """Whether the fused oneDNN linear exists here and matches the plain ops: bias and exact
    GELU (+ tanh GELU, ReLU and the residual add for the native encoder), leaving the residual
    input untouched (not used as the output buffer)."""
    try:
        op = torch.ops.mkldnn._linear_pointwise
        g = torch.Generator().manual_seed(0)
        x, w = torch.randn(9, 16, generator=g), torch.randn(24, 16, generator=g)
        b, r = torch.randn(24, generator=g), torch.randn(9, 24, generator=g)
        r_before = r.clone()
        with torch.inference_mode():
            ref = F.linear(x, w, b)
            checks = [(op(x, w, b, "none", [], ""), ref),
                      (op(x, w, b, "gelu", [], "none"), F.gelu(ref))]
            if native_variants:
                checks += [(op(x, w, b, "gelu", [], "tanh"), F.gelu(ref, approximate="tanh")),
                           (op(x, w, b, "relu", [], ""), F.relu(ref)),
                           (op.binary(x, r, w, b, "add"), ref + r)]
            ok = all(torch.allclose(a, e, atol=1e-4) for a, e in checks)
            ok = ok and torch.equal(r, r_before)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return bool(ok) and torch.backends.mkldnn.is_available()


@functools.lru_cache(maxsize=1)
def fastpath_available() -> bool:
    """Whether the fused oneDNN linear (bias, exact GELU) works here: the patch below."""
    return _self_check(native_variants=False)


@functools.lru_cache(maxsize=1)
def native_fastpath_available() -> bool:
    """Whether the fused ops the native encoder uses (bias + exact/tanh GELU, ReLU, residual
    add) work here."""
    return _self_check(native_variants=True)


def _fused_forward(lin: nn.Linear, attr: str, algo: str, x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.float32 or x.device.type != "cpu" or lin.weight.dtype != torch.float32:
        out = F.linear(x, lin.weight, lin.bias)
        return F.gelu(out) if attr == "gelu" else out
    shape = x.shape
    y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]), lin.weight, lin.bias,
                                           attr, [], algo)
    return y.reshape(*shape[:-1], y.shape[-1])


def _is_exact_gelu(act: object) -> bool:
    if isinstance(act, nn.GELU):
        return act.approximate == "none"
    # transformers' GELUActivation wraps F.gelu (exact) unless it uses the python fallback.
    return type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is F.gelu


@contextlib.contextmanager
def fused_cpu_linears(model: nn.Module) -> Iterator[bool]:
    """Temporarily route the model's nn.Linear layers (and Linear+GELU pairs) through oneDNN.

    Yields whether the fast path is active.
    """
    if not fastpath_available():
        yield False
        return
    patched: list[nn.Module] = []
    swapped: list[tuple[nn.Module, str, object]] = []
    try:
        for mod in model.modules():
            dense = getattr(mod, "dense", None)
            act = getattr(mod, "intermediate_act_fn", None)
            if isinstance(dense, nn.Linear) and dense.bias is not None and _is_exact_gelu(act):
                dense.forward = functools.partial(_fused_forward, dense, "gelu", "none")  # type: ignore[method-assign]
                patched.append(dense)
                swapped.append((mod, "intermediate_act_fn", act))
                object.__setattr__(mod, "intermediate_act_fn", _identity) if not isinstance(
                    act, nn.Module) else setattr(mod, "intermediate_act_fn", nn.Identity())
        for mod in model.modules():
            if isinstance(mod, nn.Linear) and mod.bias is not None and mod not in patched:
                mod.forward = functools.partial(_fused_forward, mod, "none", "")  # type: ignore[method-assign]
                patched.append(mod)
        yield True
    finally:
        for mod in patched:
            mod.__dict__.pop("forward", None)
        for mod, name, act in swapped:
            setattr(mod, name, act)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x

"""Which normalisation layers need a float32 override, checked on the device rather than assumed.

A norm layer's numerics are at risk in 16-bit when its kernel *accumulates* in 16-bit: mean and variance over
many values lose their precision. PyTorch's CPU and CUDA kernels for BatchNorm and GroupNorm take 16-bit inputs
with float32 parameters and accumulate in float32, so their 16-bit result is the float32 result rounded once to
16 bits, running statistics included; running them in float32 only adds two casts per layer (22% of a small
CNN's bf16 step). Other kernels do not keep every gradient exact (LayerNorm's weight gradient on CPU bf16 is off
by ~1%), so they stay float32.

:func:`exact_in` runs a small, deterministic probe per (norm kind, device, dtype), once per process: a stressed
input (mean 100, std 3, where 16-bit accumulation fails) through the functional op in float32 and in 16-bit,
comparing the output and the input gradient (at most one 16-bit rounding step apart), the parameter gradients
(relative error <= 1e-4) and the running statistics. A kind passes only if all agree.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PROBED", "exact_in", "native_norm_reason", "split_native"]

_PARAM_TOL = 1e-4  # relative error of the float32 parameter gradients (LayerNorm on CPU bf16: 1.3e-2)


def _batch_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stats: list[torch.Tensor]) -> torch.Tensor:
    return F.batch_norm(x, stats[0], stats[1], w, b, training=True, momentum=0.1, eps=1e-5)


def _group_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stats: list[torch.Tensor]) -> torch.Tensor:
    return F.group_norm(x, 4, w, b, eps=1e-5)


# module type -> (functional probe, whether it has running statistics); exact types only: a subclass may compute
# something else in its forward
PROBED: dict[type[nn.Module], tuple[Callable[..., torch.Tensor], bool]] = {
    nn.BatchNorm1d: (_batch_norm, True),
    nn.BatchNorm2d: (_batch_norm, True),
    nn.BatchNorm3d: (_batch_norm, True),
    nn.GroupNorm: (_group_norm, False),
}


def _within_one_step(low: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> bool:
    """``low`` is ``ref`` rounded to ``dtype``, give or take one step (summation order may differ)."""
    step = torch.finfo(dtype).eps * ref.abs() + torch.finfo(dtype).tiny
    return bool(((low.float() - ref).abs() <= step).all())


def _relative(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


@functools.cache
def exact_in(kind: type[nn.Module], device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``kind``'s kernel on ``device_type`` computes in float32 when fed ``dtype`` inputs (see module doc)."""
    if kind not in PROBED or dtype == torch.float32:
        return dtype == torch.float32
    op, has_stats = PROBED[kind]
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(16, 8, 6, 6, generator=g) * 3 + 100).to(device_type)
    grad_out = torch.randn(16, 8, 6, 6, generator=g).to(dtype).to(device_type)  # exact in both dtypes
    weight, bias = torch.rand(8, generator=g) + 0.5, torch.randn(8, generator=g)
    runs = {}
    try:
        for run_dtype in (torch.float32, dtype):
            w = weight.to(device_type).requires_grad_()
            b = bias.to(device_type).requires_grad_()
            xi = x.to(dtype).to(run_dtype).requires_grad_()  # both runs see the same 16-bit values
            stats = [torch.zeros(8, device=device_type), torch.ones(8, device=device_type)]
            out = op(xi, w, b, stats)
            out.backward(grad_out.to(out.dtype))
            runs[run_dtype] = (out.detach(), xi.grad, w.grad, b.grad, stats)
    except (RuntimeError, NotImplementedError):  # no 16-bit kernel on this device: keep it float32
        return False
    ref, low = runs[torch.float32], runs[dtype]
    same_stats = not has_stats or all(_relative(s, r) <= 1e-5 for s, r in zip(low[4], ref[4], strict=True))
    return (low[0].dtype == dtype and _within_one_step(low[0], ref[0], dtype)
            and _within_one_step(low[1], ref[1], dtype)
            and _relative(low[2], ref[2]) <= _PARAM_TOL and _relative(low[3], ref[3]) <= _PARAM_TOL and same_stats)


def native_norm_reason(module: nn.Module, device_type: str, dtype: torch.dtype) -> str | None:
    """Why ``module`` may run in ``dtype`` without a float32 override, or None when it must keep one."""
    kind = type(module)
    if kind not in PROBED or not exact_in(kind, device_type, dtype):
        return None
    short = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
    return f"{kind.__name__} runs in {short}: its {device_type} kernel accumulates in fp32 (checked)"


def split_native(model: nn.Module, matched: dict[str, str], rules: Sequence[str | type[nn.Module]],
                 device_type: str, dtype: torch.dtype) -> tuple[dict[str, str], dict[str, str]]:
    """Split ``match_keep_fp32``'s selection into ``(keep_fp32, native)``: a norm selected only by the defaults
    whose kernel is exact in ``dtype`` (:func:`native_norm_reason`) runs in ``dtype`` with float32 parameters;
    whatever the user named (pattern or type) keeps its float32 override."""
    user_types = tuple(r for r in rules if isinstance(r, type))
    keep: dict[str, str] = {}
    native: dict[str, str] = {}
    for name, why in matched.items():
        module = model.get_submodule(name)
        named = why.startswith("pattern") or isinstance(module, user_types)
        reason = None if named else native_norm_reason(module, device_type, dtype)
        if reason is None:
            keep[name] = why
        else:
            native[name] = reason
    return keep, native

"""Refuse a model whose weights hold NaN or inf before quantizing or exporting it.

A non-finite weight does not fail loudly downstream: dynamic quantization writes an infinite scale, 4-bit weights
round the NaN to some integer (finite outputs that silently differ from the source model), and a float decoder
generates token 0 at every step. So every entry point (``quantize``, ``autoquantize``, the ONNX, decoder and LiteRT
exports) checks once, up front: one fused reduction per floating tensor, and only on failure a second pass that
names the first bad tensor.

Parameters and persistent buffers (BatchNorm statistics, quantization scales) must be finite. Non-persistent
buffers may hold ``-inf`` on purpose (additive attention masks), so only NaN is refused there; observers' running
minimum and maximum start at ``+-inf`` and are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["NonFiniteWeightsError", "check_finite"]


class NonFiniteWeightsError(ValueError):
    """A model's parameter or buffer holds NaN or inf; the message names the first such tensor."""


def _tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """(name, tensor, must be finite) for every floating parameter and buffer, each tensor once."""
    from mixq.quant.observers import Observer

    seen: set[int] = set()
    for prefix, module in model.named_modules(remove_duplicate=True):
        if isinstance(module, Observer):
            continue
        dot = f"{prefix}." if prefix else ""
        tensors = [(name, p, True) for name, p in module.named_parameters(recurse=False)]
        tensors += [(name, b, name not in module._non_persistent_buffers_set)
                    for name, b in module.named_buffers(recurse=False)]
        for name, t, strict in tensors:
            if t is None or not t.is_floating_point() or t.is_meta or id(t) in seen:
                continue
            seen.add(id(t))
            yield dot + name, t, strict


def _bad(t: torch.Tensor, strict: bool) -> torch.Tensor:
    return ~torch.isfinite(t).all() if strict else torch.isnan(t).any()


def check_finite(model: nn.Module, what: str) -> None:
    """Raise :class:`NonFiniteWeightsError` naming the first parameter or buffer of ``model`` that holds NaN or
    inf (``what`` names the operation refused, e.g. ``"quantize"``). Costs one reduction per floating tensor."""
    tensors = list(_tensors(model))
    if not tensors:
        return
    with torch.no_grad():
        flags = torch.stack([_bad(t, strict).to("cpu") for _, t, strict in tensors])
        if not bool(flags.any()):
            return
        name, t, strict = tensors[int(flags.nonzero()[0, 0])]
        nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum()) if strict else 0
    found = " and ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "inf")) if n)
    raise NonFiniteWeightsError(
        f"cannot {what} {type(model).__name__}: its {'parameter' if isinstance(t, nn.Parameter) else 'buffer'} "
        f"{name!r} {tuple(t.shape)} holds {found} value{'s' if nan + inf > 1 else ''}; fix or reload the weights "
        "(a NaN or inf weight would be quantized and exported silently wrong)")

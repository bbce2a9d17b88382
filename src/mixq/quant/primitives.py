"""Quantize/dequantize primitives with ONNX ``QuantizeLinear``/``DequantizeLinear`` semantics.

Every part of mixq (observers, calibration, the quantized modules, QAT and the ONNX exporter) calls these functions,
so what PyTorch simulates is what ONNX Runtime computes:

* ``quantize``: ``q = saturate(round_half_to_even(x / scale) + zero_point)`` (true division, as ONNX Runtime does);
* ``dequantize``: ``x = (q - zero_point) * scale``;
* ``dynamic_qparams``: the scale/zero point ``DynamicQuantizeLinear`` derives from a tensor at run time.

Scales are float32; zero points carry the integer dtype of the quantized data (``torch.int8`` or ``torch.uint8``).
Per-axis parameters are 1-D and broadcast along ``axis``; group-wise parameters are passed already broadcastable.
"""

from __future__ import annotations

import torch

_INTEGER_DTYPES = {torch.int8: (-128, 127), torch.uint8: (0, 255), torch.int32: (-(2**31), 2**31 - 1)}


def qrange(dtype: torch.dtype, bits: int = 8, narrow: bool = False) -> tuple[int, int]:
    """Integer range ``(qmin, qmax)`` of a ``bits``-wide value stored in ``dtype``.

    ``narrow`` drops the most negative value of a signed type (``[-127, 127]`` for int8), which keeps symmetric
    ranges symmetric. Example: ``qrange(torch.int8, 4) == (-8, 7)``.
    """
    if dtype not in (torch.int8, torch.uint8):
        raise TypeError(f"quantized data must be torch.int8 or torch.uint8, got {dtype}")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be between 2 and 8, got {bits}")
    if dtype == torch.uint8:
        return 0, 2**bits - 1
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return (qmin + 1 if narrow else qmin), qmax


def along(t: torch.Tensor, ndim: int, axis: int | None) -> torch.Tensor:
    """Reshape a 1-D per-axis parameter (per channel, per row) so it broadcasts along ``axis`` of an ``ndim``-D
    tensor; per-tensor parameters (``axis`` None, or not 1-D) are returned as they are. The one broadcast helper of
    the simulation, the QAT layers and the runtime kernels."""
    if axis is None or t.dim() != 1:
        return t
    shape = [1] * ndim
    shape[axis] = -1
    return t.reshape(shape)


def _along(t: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    return along(t, x.dim(), axis)


def _bounds(zero_point: torch.Tensor, qmin: int | None, qmax: int | None) -> tuple[int, int]:
    """``(qmin, qmax)``, defaulting to the full range of the zero point's integer dtype."""
    lo, hi = _INTEGER_DTYPES[zero_point.dtype]
    return lo if qmin is None else qmin, hi if qmax is None else qmax


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    axis: int | None = None,
    qmin: int | None = None,
    qmax: int | None = None,
) -> torch.Tensor:
    """Quantize ``x`` exactly like ONNX ``QuantizeLinear``; returns a tensor of ``zero_point.dtype``.

    ``qmin``/``qmax`` narrow the saturation range (e.g. 4-bit values kept in int8); by default the full range of
    the zero point's dtype. Example: with ``zp = torch.tensor(0, dtype=torch.int8)``,
    ``quantize(torch.tensor([0.25]), torch.tensor(0.5), zp)`` gives ``tensor([0])`` (0.5 rounds half to even).
    """
    lo, hi = _bounds(zero_point, qmin, qmax)
    s = _along(scale, x, axis)
    z = _along(zero_point, x, axis).to(torch.float32)
    q = torch.round(x.to(torch.float32) / s) + z
    return q.clamp_(lo, hi).to(zero_point.dtype)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None,
               axis: int | None = None) -> torch.Tensor:
    """Dequantize like ONNX ``DequantizeLinear``: ``(q - zero_point) * scale`` in float32."""
    s = _along(scale, q, axis)
    if zero_point is None:
        return q.to(torch.float32) * s
    return (q.to(torch.float32) - _along(zero_point, q, axis).to(torch.float32)) * s


def choose_qparams(
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    dtype: torch.dtype,
    *,
    symmetric: bool,
    bits: int = 8,
    narrow: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that cover ``[min_val, max_val]`` (always widened to include 0, so 0 is exact).

    Works per tensor (0-d inputs) or per channel (1-D inputs). A zero-width range gets scale 1.0, as
    ``DynamicQuantizeLinear`` does; the values it covers are all 0 and stay exact.
    """
    qmin, qmax = qrange(dtype, bits, narrow)
    lo = torch.clamp(min_val.to(torch.float32), max=0.0)
    hi = torch.clamp(max_val.to(torch.float32), min=0.0)
    if symmetric:
        absmax = torch.maximum(-lo, hi)
        scale = absmax / ((qmax - qmin) / 2.0)
        zp = torch.full_like(scale, float((qmin + qmax + 1) // 2))
    else:
        scale = (hi - lo) / float(qmax - qmin)
        zp = None
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).to(torch.float32)
    if zp is None:
        zp = torch.round(qmin - lo / scale).clamp(qmin, qmax)
    return scale, zp.to(dtype)


def dynamic_qparams(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The uint8 scale and zero point ONNX ``DynamicQuantizeLinear`` computes for ``x`` at run time."""
    lo = torch.clamp(x.min().to(torch.float32), max=0.0)
    hi = torch.clamp(x.max().to(torch.float32), min=0.0)
    scale = (hi - lo) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zp = torch.round(0.0 - lo / scale).clamp(0, 255).to(torch.uint8)
    return scale, zp


def _fake_quantize_forward(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qmin: int,
                           qmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dequantize(quantize(x)), x / s, round(x / s) + z, that saturated)``: the one definition every fake
    quantizer uses; where the last two differ, ``x`` fell outside the representable range."""
    v = x.to(torch.float32) / s
    q = torch.round(v) + z
    clamped = q.clamp(qmin, qmax)
    return (clamped - z) * s, v, q, clamped


class _FakeQuantizeSTE(torch.autograd.Function):
    """Quantize-dequantize with a straight-through gradient, zeroed where the value saturated."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, axis, qmin, qmax):  # type: ignore[override]
        ctx.input_dtype = x.dtype
        s = _along(scale, x, axis)
        z = _along(zero_point, x, axis).to(torch.float32)
        out, _, q, clamped = _fake_quantize_forward(x, s, z, qmin, qmax)
        ctx.save_for_backward(clamped == q)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return (grad * inside).to(ctx.input_dtype), None, None, None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None = None,
                  qmin: int | None = None, qmax: int | None = None) -> torch.Tensor:
    """``dequantize(quantize(x))`` in one step, differentiable with a straight-through estimator.

    Bit-identical to ``dequantize(quantize(x, ...), ...)`` (float32 output for any input dtype); gradients pass
    through rounding and are zero where ``x`` fell outside the representable range.
    """
    return _FakeQuantizeSTE.apply(x, scale, zero_point, axis, *_bounds(zero_point, qmin, qmax))


MIN_SCALE = 1e-8  # learned scales are clamped here in the forward pass, so they stay positive


class _FakeQuantizeLSQ(torch.autograd.Function):
    """Fake quantization whose scale is learned with the LSQ gradient (Esser et al., 2019)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, axis, qmin, qmax, grad_factor):  # type: ignore[override]
        ctx.input_dtype, ctx.axis = x.dtype, axis
        s = _along(scale.detach().to(torch.float32).clamp(min=MIN_SCALE), x, axis)
        z = _along(zero_point, x, axis).to(torch.float32)
        out, v, q, clamped = _fake_quantize_forward(x, s, z, qmin, qmax)
        inside = clamped == q
        # d out / d s: round(v) - v inside the range (rounding passes straight through), the clamped level outside
        ds = torch.where(inside, q - z - v, clamped - z)
        ctx.save_for_backward(inside, ds)
        ctx.grad_factor, ctx.scale_shape, ctx.scale_dtype = grad_factor, scale.shape, scale.dtype
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        inside, ds = ctx.saved_tensors
        g = grad.to(torch.float32) * ds * ctx.grad_factor
        if ctx.axis is None or len(ctx.scale_shape) == 0:
            grad_scale = g.sum()
        else:
            axis = ctx.axis % g.dim()
            grad_scale = g.sum(dim=[d for d in range(g.dim()) if d != axis])
        grad_scale = grad_scale.reshape(ctx.scale_shape).to(ctx.scale_dtype)
        return (grad * inside).to(ctx.input_dtype), grad_scale, None, None, None, None, None


def fake_quantize_lsq(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None = None,
                      qmin: int | None = None, qmax: int | None = None) -> torch.Tensor:
    """``fake_quantize`` with a trainable ``scale`` (LSQ): same forward values, plus a gradient for the scale.

    The scale's gradient is LSQ's, ``sum((round(x/s) - x/s) * g_out)`` inside the range and the saturated level
    outside, multiplied by LSQ's gradient scale ``1 / sqrt(N * Q_p)`` (``N`` elements per scale, ``Q_p`` the
    number of positive levels) so scale updates stay commensurate with weight updates. The zero point is fixed.
    The scale is clamped to ``MIN_SCALE`` in the forward pass, so it is always positive.
    """
    lo, hi = _bounds(zero_point, qmin, qmax)
    per_scale = max(x.numel() // max(scale.numel(), 1), 1)
    positive_levels = max(hi - int(zero_point.reshape(-1)[0]) if zero_point.numel() else hi, 1)
    grad_factor = 1.0 / (per_scale * positive_levels) ** 0.5
    return _FakeQuantizeLSQ.apply(x, scale, zero_point, axis, lo, hi, grad_factor)

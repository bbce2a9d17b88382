"""mixq's quantized arithmetic as PyTorch custom ops (``torch.ops.mixq``): what the quantized modules compute.

Each op's eager body is the exact integer arithmetic of one quantized layer kind: integer accumulation, float32
requantization (multiply, round half to even, add the zero point, saturate), written with the shared primitives.
This is the arithmetic ONNX Runtime's integer kernels run (each docstring names the kernel); a backend that runs
something else says so in its own folder (LiteRT's ``export/tflite/lowering``), and a backend's lowering table maps
each op onto its file format (ONNX's ``export/onnx/translations``). One op per layer kind keeps the emitted pattern
under the backends' control instead of the exporter's decompositions. Importing this module registers
``torch.ops.mixq``; it imports no backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixq.quant.modules.conv_args import conv_nd
from mixq.quant.primitives import along, dequantize, dynamic_qparams, qrange, quantize
from mixq.quant.weight_only.grid import unpack_matmul_nbits

_EXACT_FP32 = 2**24  # integers below this magnitude are exact in float32 sums


def _acc_dtype(k: int, x_span: int = 255, w_span: int = 128) -> torch.dtype:
    """float32 holds the integer accumulation exactly when every partial sum stays below 2**24."""
    return torch.float32 if k * x_span * w_span < _EXACT_FP32 else torch.float64


def _centered(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """``x`` quantized, minus its zero point, as float32 integers: what the integer kernels multiply."""
    return quantize(x, scale, zero_point).to(torch.float32) - zero_point.to(torch.float32)


def _requantize(acc: torch.Tensor, multiplier: torch.Tensor, y_zp: torch.Tensor, relu: bool) -> torch.Tensor:
    """int32 accumulator -> float32 -> scale -> round half to even -> + zero point -> saturate (MLAS order)."""
    lo, hi = qrange(y_zp.dtype)
    lo = int(y_zp.item()) if relu else lo
    q = torch.round(acc.to(torch.float32) * multiplier) + y_zp.to(torch.float32)
    return q.clamp_(lo, hi).to(y_zp.dtype)


def _conv(x: torch.Tensor, w: torch.Tensor, stride, padding, dilation, groups) -> torch.Tensor:
    return conv_nd(x, w, None, stride, padding, dilation, groups)


@torch.library.custom_op("mixq::qconv", mutates_args=())
def qconv(x: torch.Tensor, x_scale: torch.Tensor, x_zp: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
          bias_q: torch.Tensor | None, y_scale: torch.Tensor, y_zp: torch.Tensor, stride: list[int],
          padding: list[int], dilation: list[int], groups: int, relu: bool) -> torch.Tensor:
    """Static int8 convolution (ONNX Runtime: QLinearConv). Float in, dequantized float out."""
    xi = _centered(x, x_scale, x_zp)
    dt = _acc_dtype(w_q[0].numel())
    acc = _conv(xi.to(dt), w_q.to(dt), stride, padding, dilation, groups)
    if bias_q is not None:
        acc = acc + along(bias_q.to(dt), acc.dim(), 1)
    multiplier = along((x_scale * w_scale) / y_scale, acc.dim(), 1)
    return dequantize(_requantize(acc, multiplier, y_zp, relu), y_scale, y_zp)


@qconv.register_fake
def _(x, x_scale, x_zp, w_q, w_scale, bias_q, y_scale, y_zp, stride, padding, dilation, groups, relu):
    return _conv(x, torch.empty_like(w_q, dtype=x.dtype), stride, padding, dilation, groups)


@torch.library.custom_op("mixq::qlinear", mutates_args=())
def qlinear(x: torch.Tensor, x_scale: torch.Tensor, x_zp: torch.Tensor, w_t: torch.Tensor, w_scale: torch.Tensor,
            bias: torch.Tensor | None, y_scale: torch.Tensor | None, y_zp: torch.Tensor | None,
            relu: bool) -> torch.Tensor:
    """Static int8 linear layer; ``w_t`` is the int8 weight transposed to ``[in, out]``.

    Without bias ONNX Runtime runs QLinearMatMul (requantize with ``x_scale * w_scale / y_scale``); with bias it
    runs MatMulIntegerToFloat (``acc * x_scale * w_scale + bias``), then QuantizeLinear. Both are mirrored here.
    Without ``y_scale`` (graph mode, when no integer kernel reads the output) the output stays float:
    MatMulIntegerToFloat's result, with no QuantizeLinear after it.
    """
    xi = _centered(x, x_scale, x_zp)
    dt = _acc_dtype(w_t.shape[0])
    acc = torch.matmul(xi.to(dt), w_t.to(dt))
    float_output = y_scale is None or y_zp is None
    if bias is None and not float_output:
        return dequantize(_requantize(acc, (x_scale * w_scale) / y_scale, y_zp, relu), y_scale, y_zp)
    y = acc.to(torch.float32) * (x_scale * w_scale)
    if bias is not None:
        y = y + bias
    if relu:
        y = torch.relu(y)
    return y if float_output else dequantize(quantize(y, y_scale, y_zp), y_scale, y_zp)


@qlinear.register_fake
def _(x, x_scale, x_zp, w_t, w_scale, bias, y_scale, y_zp, relu):
    return x.new_empty((*x.shape[:-1], w_t.shape[1]))


def row_rounding(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to int8 per row (last dimension) and back, in XNNPACK's float arithmetic
    (``xnn_f32_qd8_asymmetric_quantization_params`` and the ``f32-qd8-vcvt`` kernels), as LiteRT's hybrid and
    integer-weight kernels quantize their input at run time: the range widened to hold 0, ``inv = 255 / range``
    (one IEEE division: PyTorch's ``255.0 / t`` is ``t.reciprocal() * 255``, two roundings), the zero point taken
    from the end with the smaller error and rounded, ``q = round(x * inv) + zero`` (ties to even; the integer zero
    point is added after rounding: ``round(x * inv + zero)`` loses the low bits of ``x * inv`` in the addition),
    ``(q - zero) / inv``. A row on a grid close to XNNPACK's (an int8 embedding row, normalized) has many values on
    ties, which any other order of these roundings moves."""
    lo = torch.clamp(x.amin(-1, keepdim=True), max=0.0)
    hi = torch.clamp(x.amax(-1, keepdim=True), min=0.0)
    span = hi - lo
    inv = torch.where(hi > lo, torch.full_like(span, 255.0).div(span), torch.ones_like(hi))
    lo_inv, hi_inv = lo * inv, hi * inv
    zero = torch.where((-128 + lo_inv) + (127 + hi_inv) > 0, -128 - lo_inv, 127 - hi_inv)
    zero = torch.round(torch.clamp(zero, -128, 127))
    q = torch.clamp(torch.round(x * inv) + zero, -128, 127)
    return (q - zero) / inv


@torch.library.custom_op("mixq::qlinear_rows", mutates_args=())
def qlinear_rows(x: torch.Tensor, w_t: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                 relu: bool) -> torch.Tensor:
    """Static int8 linear layer with a float output, as LiteRT runs it (its hybrid FULLY_CONNECTED, XNNPACK's
    qd8-f32-qc8w kernel): the input quantized per row at run time (:func:`row_rounding`), not on a calibrated
    grid; int8 weights ``w_t`` (``[in, out]``) with per-channel ``w_scale``; float bias and output."""
    y = torch.matmul(row_rounding(x), dequantize(w_t, w_scale, axis=1))
    if bias is not None:
        y = y + bias
    return torch.relu(y) if relu else y


@qlinear_rows.register_fake
def _(x, w_t, w_scale, bias, relu):
    return x.new_empty((*x.shape[:-1], w_t.shape[1]))


@torch.library.custom_op("mixq::qmatmul", mutates_args=())
def qmatmul(a: torch.Tensor, a_scale: torch.Tensor, a_zp: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
            b_zp: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Matrix product of two activations on int8/uint8 grids, times ``alpha``, float out (ONNX Runtime:
    MatMulIntegerToFloat with both operands computed at run time, and ``a_scale * alpha`` as A's scale so the
    factor joins the kernel's multiplier): attention's Q·Kᵀ (alpha: 1/√d) and probabilities·V in graph mode."""
    ai = _centered(a, a_scale, a_zp)
    bi = _centered(b, b_scale, b_zp)
    dt = _acc_dtype(a.shape[-1], 255, 255)
    return torch.matmul(ai.to(dt), bi.to(dt)).to(torch.float32) * ((a_scale * alpha) * b_scale)


@qmatmul.register_fake
def _(a, a_scale, a_zp, b, b_scale, b_zp, alpha=1.0):
    return torch.matmul(a, b)


@torch.library.custom_op("mixq::dynamic_linear", mutates_args=())
def dynamic_linear(x: torch.Tensor, w_t: torch.Tensor, w_scale: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
    """Dynamic int8 linear (ONNX Runtime: DynamicQuantizeMatMul): activations quantized per call to uint8."""
    x_scale, x_zp = dynamic_qparams(x)
    xi = _centered(x, x_scale, x_zp)
    dt = _acc_dtype(w_t.shape[0])
    y = torch.matmul(xi.to(dt), w_t.to(dt)).to(torch.float32) * (x_scale * w_scale)
    return y if bias is None else y + bias


@dynamic_linear.register_fake
def _(x, w_t, w_scale, bias):
    return x.new_empty((*x.shape[:-1], w_t.shape[1]))


@torch.library.custom_op("mixq::dynamic_conv", mutates_args=())
def dynamic_conv(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                 stride: list[int], padding: list[int], dilation: list[int], groups: int) -> torch.Tensor:
    """Dynamic int8 convolution (ONNX Runtime: DynamicQuantizeLinear + ConvInteger + scale)."""
    x_scale, x_zp = dynamic_qparams(x)
    xi = _centered(x, x_scale, x_zp)
    dt = _acc_dtype(w_q[0].numel())
    acc = _conv(xi.to(dt), w_q.to(dt), stride, padding, dilation, groups).to(torch.float32)
    y = acc * along(x_scale * w_scale, acc.dim(), 1)
    return y if bias is None else y + along(bias, y.dim(), 1)


@dynamic_conv.register_fake
def _(x, w_q, w_scale, bias, stride, padding, dilation, groups):
    return _conv(x, torch.empty_like(w_q, dtype=x.dtype), stride, padding, dilation, groups)


@torch.library.custom_op("mixq::matmul_nbits", mutates_args=())
def matmul_nbits(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None,
                 bias: torch.Tensor | None, in_features: int, bits: int, block_size: int) -> torch.Tensor:
    """Weight-only (2/4/8-bit, block-wise) linear layer (ONNX Runtime: MatMulNBits); activations stay float."""
    w = unpack_matmul_nbits(packed, scales, zero_points, bits, in_features)
    return F.linear(x, w, bias)


@matmul_nbits.register_fake
def _(x, packed, scales, zero_points, bias, in_features, bits, block_size):
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


@torch.library.custom_op("mixq::matmul_nbits_rows", mutates_args=())
def matmul_nbits_rows(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None,
                      bias: torch.Tensor | None, in_features: int, bits: int, block_size: int) -> torch.Tensor:
    """Weight-only linear layer as LiteRT runs it (XNNPACK's qd8-f32-qb4w / qc4w / qc8w kernels): the input
    quantized per row at run time (:func:`row_rounding`), times the integer weights with ``scales`` as the file
    stores them (the layer rounds them so when quantized for LiteRT); float bias and output."""
    w = unpack_matmul_nbits(packed, scales, zero_points, bits, in_features)
    return F.linear(row_rounding(x), w, bias)


@matmul_nbits_rows.register_fake
def _(x, packed, scales, zero_points, bias, in_features, bits, block_size):
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


@torch.library.custom_op("mixq::dequantize_weight", mutates_args=())
def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, axis: int) -> torch.Tensor:
    """Per-channel int8 weight -> float (ONNX: DequantizeLinear), for weight-only layers."""
    return dequantize(q, scale, None, axis)


@dequantize_weight.register_fake
def _(q, scale, axis):
    return torch.empty_like(q, dtype=torch.float32)


@torch.library.custom_op("mixq::upcast", mutates_args=())
def upcast(w: torch.Tensor) -> torch.Tensor:
    """float16 weight -> float32 (ONNX: Cast), for float16 ("TFLite float16") layers."""
    return w.to(torch.float32)


@upcast.register_fake
def _(w):
    return torch.empty_like(w, dtype=torch.float32)


@torch.library.custom_op("mixq::embedding_lookup", mutates_args=())
def embedding_lookup(indices: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Rows of an int8 table with per-row scales, dequantized after the lookup (ONNX: Gather, Cast, Mul)."""
    return q[indices].to(torch.float32) * scale[indices].unsqueeze(-1)


@embedding_lookup.register_fake
def _(indices, q, scale):
    return q.new_empty((*indices.shape, q.shape[1]), dtype=torch.float32)


@torch.library.custom_op("mixq::qadd", mutates_args=())
def qadd(a: torch.Tensor, a_scale: torch.Tensor, a_zp: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
         b_zp: torch.Tensor, y_scale: torch.Tensor, y_zp: torch.Tensor, relu: bool) -> torch.Tensor:
    """Quantized elementwise add (ONNX Runtime: QLinearAdd): both inputs and the output on int8/uint8 grids."""
    y = dequantize(quantize(a, a_scale, a_zp), a_scale, a_zp) + dequantize(quantize(b, b_scale, b_zp), b_scale, b_zp)
    lo = int(y_zp.item()) if relu else None
    return dequantize(quantize(y, y_scale, y_zp, qmin=lo), y_scale, y_zp)


@qadd.register_fake
def _(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp, relu):
    return torch.empty(torch.broadcast_shapes(a.shape, b.shape), dtype=a.dtype, device=a.device)

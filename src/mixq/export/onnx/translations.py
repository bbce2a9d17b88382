"""ONNX translations of mixq's custom ops: the QDQ / integer patterns ONNX Runtime fuses into integer kernels.

* ``qconv``: Q -> DQ -> Conv(DQ weight, DQ int32 bias) [-> Relu] -> Q -> DQ  => QLinearConv
* ``qlinear``: Q -> DQ -> MatMul(DQ weight) -> Q -> DQ => QLinearMatMul. With a bias, ONNX Runtime would fuse
  MatMul + Add into a float Gemm (and does not fuse QDQ Gemm on CPU), so the integer kernel is emitted directly:
  Q -> com.microsoft MatMulIntegerToFloat(bias) [-> Relu] -> Q -> DQ
  Graph mode leaves the output float where no integer kernel reads it: the same without the final Q -> DQ.
* ``qmatmul`` (two activations, e.g. attention): Q (both) -> com.microsoft MatMulIntegerToFloat, a constant factor
  (attention's 1/√d) folded into A's scale input, which only the kernel's output multiplier reads
* ``qadd``: Q -> DQ (both inputs) -> Add [-> Relu] -> Q -> DQ => QLinearAdd
* ``dynamic_linear``: DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul [-> Add] => DynamicQuantizeMatMul
* ``dynamic_conv``: DynamicQuantizeLinear -> ConvInteger -> Cast -> Mul [-> Add]
* ``matmul_nbits``: com.microsoft MatMulNBits [-> Add]
* ``embedding_lookup``: Gather of the int8 table and of the per-row scales -> Cast -> Mul
* ``dequantize_weight`` / ``upcast``: DequantizeLinear / Cast of stored int8 / float16 weights

A new quantized op adds one ``@translates("name")`` function here (as LiteRT's ``@lowers`` in ``tflite/lowering``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from onnxscript import FLOAT
from onnxscript import opset18 as op

import mixq.quant.kernels  # noqa: F401  (registers torch.ops.mixq)
from mixq.export.onnx.contrib_ops import MatMulIntegerToFloat, MatMulNBits
from mixq.quant.modules.conv_args import onnx_pads

_TABLE: dict[str, Callable] = {}


def translates(op_name: str) -> Callable[[Callable], Callable]:
    """Register ``fn`` as the ONNX translation of the core's custom op ``torch.ops.mixq.<op_name>``."""
    if not hasattr(torch.ops.mixq, op_name):
        raise ValueError(f"torch.ops.mixq has no op {op_name!r} (the core's ops live in mixq.quant.kernels)")

    def register(fn: Callable) -> Callable:
        _TABLE[op_name] = fn
        return fn

    return register


def _qdq(x, scale, zp):
    return op.DequantizeLinear(op.QuantizeLinear(x, scale, zp), scale, zp)


def _per_channel(t, ndim: int):
    """Reshape a per-output-channel vector to broadcast over an N-C-spatial tensor of rank ``ndim``."""
    return op.Reshape(t, op.Constant(value_ints=[-1] + [1] * (ndim - 2)))


@translates("qconv")
def qconv(x, x_scale, x_zp, w_q, w_scale, bias_q, y_scale, y_zp, stride, padding, dilation, groups, relu):
    xd = _qdq(x, x_scale, x_zp)
    wd = op.DequantizeLinear(w_q, w_scale, axis=0)
    attrs = dict(strides=stride, pads=onnx_pads(padding, len(stride)), dilations=dilation, group=groups)
    if bias_q is None:
        y = op.Conv(xd, wd, **attrs)
    else:
        y = op.Conv(xd, wd, op.DequantizeLinear(bias_q, op.Mul(x_scale, w_scale), axis=0), **attrs)
    if relu:
        y = op.Relu(y)
    return _qdq(y, y_scale, y_zp)


@translates("qlinear")
def qlinear(x, x_scale, x_zp, w_t, w_scale, bias, y_scale, y_zp, relu):
    if bias is None and y_scale is not None:
        y = op.MatMul(_qdq(x, x_scale, x_zp), op.DequantizeLinear(w_t, w_scale, axis=1))
    else:
        y = MatMulIntegerToFloat(op.QuantizeLinear(x, x_scale, x_zp), w_t, x_scale, w_scale, x_zp, None, bias)
    if relu:
        y = op.Relu(y)
    return y if y_scale is None else _qdq(y, y_scale, y_zp)


@translates("qmatmul")
def qmatmul(a, a_scale, a_zp, b, b_scale, b_zp, alpha=1.0):
    multiplier_scale = a_scale if alpha == 1.0 else op.Mul(a_scale, op.Constant(value_float=alpha))  # folded
    return MatMulIntegerToFloat(op.QuantizeLinear(a, a_scale, a_zp), op.QuantizeLinear(b, b_scale, b_zp),
                                multiplier_scale, b_scale, a_zp, b_zp)


@translates("qadd")
def qadd(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp, relu):
    y = op.Add(_qdq(a, a_scale, a_zp), _qdq(b, b_scale, b_zp))
    if relu:
        y = op.Relu(y)
    return _qdq(y, y_scale, y_zp)


@translates("dynamic_linear")
def dynamic_linear(x, w_t, w_scale, bias):
    xq, x_scale, x_zp = op.DynamicQuantizeLinear(x)
    acc = op.Cast(op.MatMulInteger(xq, w_t, x_zp), to=FLOAT.dtype)
    y = op.Mul(acc, op.Mul(x_scale, w_scale))
    return y if bias is None else op.Add(y, bias)


@translates("dynamic_conv")
def dynamic_conv(x, w_q, w_scale, bias, stride, padding, dilation, groups):
    xq, x_scale, x_zp = op.DynamicQuantizeLinear(x)
    ndim = len(stride) + 2
    acc = op.ConvInteger(xq, w_q, x_zp, strides=stride, pads=onnx_pads(padding, len(stride)), dilations=dilation,
                          group=groups)
    y = op.Mul(op.Cast(acc, to=FLOAT.dtype), _per_channel(op.Mul(x_scale, w_scale), ndim))
    return y if bias is None else op.Add(y, _per_channel(bias, ndim))


@translates("matmul_nbits")
def matmul_nbits(x, packed, scales, zero_points, bias, in_features, bits, block_size):
    y = MatMulNBits(x, packed, scales, zero_points, K=in_features, N=int(packed.shape[0]), bits=bits,
                    block_size=block_size)
    return y if bias is None else op.Add(y, bias)


@translates("embedding_lookup")
def embedding_lookup(indices, q, scale):
    rows = op.Cast(op.Gather(q, indices, axis=0), to=FLOAT.dtype)
    return op.Mul(rows, op.Unsqueeze(op.Gather(scale, indices, axis=0), op.Constant(value_ints=[-1])))


@translates("dequantize_weight")
def dequantize_weight(q, scale, axis):
    return op.DequantizeLinear(q, scale, axis=axis)


@translates("upcast")
def upcast(w):
    return op.Cast(w, to=FLOAT.dtype)


def translation_table() -> dict[Callable, Callable]:
    """The ``custom_translation_table`` handed to ``torch.onnx.export``: every registered translation."""
    return {getattr(torch.ops.mixq, name).default: fn for name, fn in _TABLE.items()}

"""LiteRT's lowering table: each mixq quantized module class -> a plain PyTorch module that litert-torch converts.

Full-integer layers become the ``quantized_decomposed`` quantize/dequantize pattern that LiteRT's converter fuses into
int8 kernels, carrying mixq's own scales and zero points: activations ``Q -> DQ`` with the layer's calibrated (or
QAT-learned) parameters, weights ``float -> quantize_per_channel -> dequantize_per_channel`` (the converter rejects a
dequantize of a stored int8 tensor), and the float bias, which the converter quantizes to int32 at
``x_scale * w_scale`` exactly as mixq does. The float weight is mixq's int8 weight times its scale, so the converter's
quantize gives mixq's int8 values back. Dynamic-range and float16 layers lower to float layers holding mixq's
dequantized / upcast weights; ``recipes`` then stores those weights as int8 / float16. Weight-only layers lower to
float layers holding mixq's codes times scales, stored back as integers by ``weight_only``. An int8 embedding keeps its
int8 table in any file (GATHER, CAST, MUL by the per-row scale).

A new quantized layer kind adds one ``@lowers(...)`` function here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mixq.export.tflite.weight_only import WeightOnlyWeights
from mixq.quant.fusion import set_submodule
from mixq.quant.graft import copy_model
from mixq.quant.modules import (
    DynamicQuantizedConv,
    DynamicQuantizedLinear,
    Float16Conv,
    Float16Linear,
    QuantizedAdd,
    QuantizedConv,
    QuantizedEmbedding,
    QuantizedLinear,
    QuantizedMatMul,
    WeightOnlyLinear,
)
from mixq.quant.modules.conv_args import ConvGeometry

INT8_MIN, INT8_MAX = -128, 127
WEIGHT_MIN, WEIGHT_MAX = -127, 127  # LiteRT's int8 weights are symmetric, zero point 0
# LiteRT file kinds, not mixq.quant.spec.MODES
LITERT_MODES = ("full_integer", "dynamic_range", "weight_only", "float16", "float32")


@dataclass(frozen=True)
class Lowering:
    """How one mixq module class reaches LiteRT: the LiteRT mode it implies and the function building its module."""

    mode: str | None  # None: the layer fits a file of any mode (an int8 embedding table)
    build: Callable[[nn.Module], nn.Module]


_TABLE: dict[type[nn.Module], Lowering] = {}


def lowers(cls: type[nn.Module], mode: str | None) -> Callable[[Callable[[nn.Module], nn.Module]], Callable]:
    """Register ``build`` as the LiteRT lowering of mixq module class ``cls`` (``mode`` is one of ``LITERT_MODES``,
    or None for a layer that fits a file of any mode)."""
    if mode is not None and mode not in LITERT_MODES:
        raise ValueError(f"mode must be one of {LITERT_MODES}, got {mode!r}")

    def register(build: Callable[[nn.Module], nn.Module]) -> Callable[[nn.Module], nn.Module]:
        _TABLE[cls] = Lowering(mode, build)
        return build

    return register


def lowering_of(module: nn.Module) -> Lowering | None:
    """The registered lowering of ``module``'s exact class, or None for modules that convert as they are."""
    return _TABLE.get(type(module))


class ActivationQParams(nn.Module):
    """One activation tensor's scale and zero point on LiteRT's int8 grid.

    mixq's uint8 activations (zero point ``z`` in [0, 255]) are the same grid as int8 with zero point ``z - 128``:
    every representable value is unchanged, only the stored integers shift by 128.
    """

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        super().__init__()
        shift = 128 if zero_point.dtype == torch.uint8 else 0
        self.scale = float(scale.reshape(()).item())
        self.zero_point = int(zero_point.reshape(()).item()) - shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd, grid = torch.ops.quantized_decomposed, (self.scale, self.zero_point, INT8_MIN, INT8_MAX, torch.int8)
        return qd.dequantize_per_tensor(qd.quantize_per_tensor(x, *grid), *grid)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}, zero_point={self.zero_point}"


class PerChannelWeight(nn.Module):
    """A float weight routed through ``quantize_per_channel -> dequantize_per_channel`` with mixq's scales."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, axis: int = 0) -> None:
        super().__init__()
        channels = q.shape[axis]
        scale = scale.detach().to(torch.float32).reshape(-1).expand(channels).contiguous()  # per-tensor -> channels
        self.axis = axis
        self.register_buffer("weight", _dequantized(q, scale, axis))
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", torch.zeros(channels, dtype=torch.int64))

    def forward(self) -> torch.Tensor:
        args = (self.scale, self.zero_point, self.axis, WEIGHT_MIN, WEIGHT_MAX, torch.int8)
        qd = torch.ops.quantized_decomposed
        return qd.dequantize_per_channel(qd.quantize_per_channel(self.weight, *args), *args)


def _dequantized(q: torch.Tensor, scale: torch.Tensor, axis: int) -> torch.Tensor:
    shape = [1] * q.dim()
    shape[axis] = -1
    return q.to(torch.float32) * scale.reshape(shape)


class QDQConv(nn.Module):
    """``QuantizedConv`` for LiteRT: Q/DQ input, Q/DQ per-channel weight, float bias, [ReLU], Q/DQ output."""

    def __init__(self, m: QuantizedConv) -> None:
        super().__init__()
        self.x_q = ActivationQParams(m.x_scale, m.x_zp)
        self.y_q = ActivationQParams(m.y_scale, m.y_zp)
        self.weight = PerChannelWeight(m.qweight, m.w_scale)
        bias = None if m.bias is None else m.bias.to(torch.float64) * (m.x_scale * m.w_scale).to(torch.float64)
        self.register_buffer("bias", None if bias is None else bias.to(torch.float32))
        self.geometry, self.relu = m.geometry, m.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.geometry.apply(self.x_q(x), self.weight(), self.bias)
        return self.y_q(F.relu(y) if self.relu else y)


class QDQLinear(nn.Module):
    """``QuantizedLinear`` for LiteRT: Q/DQ input, Q/DQ per-channel weight, float bias, [ReLU], Q/DQ output."""

    def __init__(self, m: QuantizedLinear) -> None:
        super().__init__()
        self.x_q = ActivationQParams(m.x_scale, m.x_zp)
        self.y_q = ActivationQParams(m.y_scale, m.y_zp)
        self.weight = PerChannelWeight(m.weight_t.t(), m.w_scale)
        self.register_buffer("bias", None if m.bias is None else m.bias.clone())
        self.register_buffer("x_smooth", m.x_smooth)  # SmoothQuant's 1 / s, a float MUL before the input grid
        self.relu = m.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(self.x_q(x if self.x_smooth is None else x * self.x_smooth), self.weight(), self.bias)
        return self.y_q(F.relu(y) if self.relu else y)


class HybridLinear(nn.Module):
    """A ``QuantizedLinear`` whose output mixq keeps float (graph mode: no integer kernel reads it; ONNX Runtime's
    MatMulIntegerToFloat). LiteRT's int8 FULLY_CONNECTED has no float output, so it runs as LiteRT's hybrid kernel:
    mixq's int8 weight (stored as int8 by ``recipes``, found by its values), float input and output. That kernel
    quantizes its input itself at run time (XNNPACK: one grid per row, never coarser than mixq's one per tensor)
    and takes no input grid, so mixq's is not used: a model quantized for LiteRT (``runtime='litert'``,
    ``QuantizedLinear.rows``) simulates that rounding; the export's check allows for it (``mixq.export.tflite.check``).
    """

    def __init__(self, m: QuantizedLinear) -> None:
        super().__init__()
        scale = m.w_scale.reshape(-1).expand(m.weight_t.shape[1])
        self.dense = DynamicRangeWeights(_dequantized(m.weight_t.t(), scale, 0), m.bias, None)
        self.register_buffer("x_smooth", m.x_smooth)  # SmoothQuant's 1 / s, a float MUL before the kernel
        self.relu = m.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dense(x if self.x_smooth is None else x * self.x_smooth)
        return F.relu(y) if self.relu else y


class QDQMatMul(nn.Module):
    """``QuantizedMatMul`` for LiteRT: both activations on their int8 grids, float product (attention's Q·Kᵀ and
    probabilities·V) times ``alpha`` (attention's 1/√d, which graph mode folds into the MatMul: a float MUL)."""

    def __init__(self, m: QuantizedMatMul) -> None:
        super().__init__()
        self.a_q = ActivationQParams(m.x_scale, m.x_zp)
        self.b_q = ActivationQParams(m.b_scale, m.b_zp)
        self.alpha = float(m.alpha)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(self.a_q(a), self.b_q(b))
        return y if self.alpha == 1.0 else y * self.alpha


class QDQAdd(nn.Module):
    """``QuantizedAdd`` for LiteRT: both inputs and the output on their int8 grids."""

    def __init__(self, m: QuantizedAdd) -> None:
        super().__init__()
        self.a_q = ActivationQParams(m.x_scale, m.x_zp)
        self.b_q = ActivationQParams(m.b_scale, m.b_zp)
        self.y_q = ActivationQParams(m.y_scale, m.y_zp)
        self.relu = m.relu

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        y = self.a_q(a) + self.b_q(b)
        return self.y_q(F.relu(y) if self.relu else y)


class _FloatWeights(nn.Module):
    """A float conv/linear layer holding given weights (mixq's dequantized int8 or upcast float16 weights)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, geometry: ConvGeometry | None) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().to(torch.float32).clone())
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        self.geometry = geometry

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.geometry is None:
            return F.linear(x, self.weight, self.bias)
        return self.geometry.apply(x, self.weight, self.bias)


class DynamicRangeWeights(_FloatWeights):
    """A dynamic-range layer before ``recipes`` stores its weight as int8 (found in the file by its values)."""


class Float16Weights(_FloatWeights):
    """A float16 layer before ``recipes`` stores its weight as float16 (found in the file by its values)."""


class Int8Embedding(nn.Module):
    """``QuantizedEmbedding`` for LiteRT: mixq's int8 table stored as int8, GATHER of the rows and of their
    per-row scales, CAST to float32 and MUL, the arithmetic of ``mixq.quant.kernels.embedding_lookup``."""

    def __init__(self, m: QuantizedEmbedding) -> None:
        super().__init__()
        self.register_buffer("weight", m.qweight.detach().clone())
        self.register_buffer("scale", m.w_scale.detach().to(torch.float32).reshape(-1).clone())

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.weight[indices].to(torch.float32) * self.scale[indices].unsqueeze(-1)


lowers(QuantizedConv, "full_integer")(QDQConv)


@lowers(QuantizedLinear, "full_integer")
def _static_linear(m: QuantizedLinear) -> nn.Module:
    return HybridLinear(m) if m.y_scale is None else QDQLinear(m)


lowers(QuantizedAdd, "full_integer")(QDQAdd)
lowers(QuantizedMatMul, "full_integer")(QDQMatMul)
lowers(QuantizedEmbedding, None)(Int8Embedding)
lowers(WeightOnlyLinear, "weight_only")(WeightOnlyWeights)


@lowers(DynamicQuantizedLinear, "dynamic_range")
def _dynamic_linear(m: DynamicQuantizedLinear) -> nn.Module:
    scale = m.w_scale.reshape(-1).expand(m.weight_t.shape[1])
    return DynamicRangeWeights(_dequantized(m.weight_t.t(), scale, 0), m.bias, None)


@lowers(DynamicQuantizedConv, "dynamic_range")
def _dynamic_conv(m: DynamicQuantizedConv) -> nn.Module:
    scale = m.w_scale.reshape(-1).expand(m.qweight.shape[0])
    return DynamicRangeWeights(_dequantized(m.qweight, scale, 0), m.bias, m.geometry)


@lowers(Float16Linear, "float16")
def _float16_linear(m: Float16Linear) -> nn.Module:
    return Float16Weights(m.weight_fp16, m.bias, None)


@lowers(Float16Conv, "float16")
def _float16_conv(m: Float16Conv) -> nn.Module:
    return Float16Weights(m.weight_fp16, m.bias, m.geometry)


def lower(model: nn.Module) -> tuple[nn.Module, dict[str, str]]:
    """A copy of ``model`` with every registered mixq module replaced by its LiteRT lowering.

    Returns the copy and ``{module name: LiteRT mode}`` of what was lowered (empty for a float model).
    """
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)

    lowered = copy_model(model).eval()
    modes: dict[str, str] = {}
    for name, module in list(lowered.named_modules()):
        rule = lowering_of(module)
        if rule is not None and name:
            set_submodule(lowered, name, rule.build(module))
            if rule.mode is not None:
                modes[name] = rule.mode
        elif rule is not None:
            raise TypeError(f"export_tflite needs a model containing {type(module).__name__} layers, not a bare "
                            f"{type(module).__name__}; wrap it in an nn.Sequential")
    return lowered, modes

"""Dynamic int8 layers: int8 weights, activations quantized to uint8 per call from their own min/max."""

from __future__ import annotations

import torch
from torch import nn

from mixq.quant import kernels as ops
from mixq.quant.modules.conv_args import Int8WeightConv
from mixq.quant.modules.facade import FloatFacade
from mixq.quant.modules.registry import register_qmodule
from mixq.quant.spec import QuantConfig, QuantSpec
from mixq.quant.weights import float_bias, quantize_weight


@register_qmodule(nn.Linear, "dynamic")
class DynamicQuantizedLinear(FloatFacade):
    """Linear layer running as ONNX Runtime's DynamicQuantizeMatMul. No calibration needed.

    Example: ``DynamicQuantizedLinear(nn.Linear(768, 768), DEFAULT_WEIGHT)``.
    """

    @classmethod
    def from_float(cls, linear: nn.Linear, config: QuantConfig) -> DynamicQuantizedLinear:
        return cls(linear, config.weight)

    def __init__(self, linear: nn.Linear, weight_spec: QuantSpec) -> None:
        super().__init__()
        q, w_scale = quantize_weight(linear.weight, weight_spec, axis=0)
        self.register_buffer("weight_t", q.t().contiguous())
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("bias", float_bias(linear))
        self.expose(linear)

    def float_weight(self) -> torch.Tensor:
        return ops.dequantize_weight(self.weight_t, self.w_scale, 1).t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.dynamic_linear(x, self.weight_t, self.w_scale, self.bias)

    def extra_repr(self) -> str:
        k, n = self.weight_t.shape
        return f"in_features={k}, out_features={n}"


@register_qmodule((nn.Conv1d, nn.Conv2d), "dynamic")
class DynamicQuantizedConv(Int8WeightConv):
    """Conv1d/Conv2d running as DynamicQuantizeLinear + ConvInteger in ONNX Runtime."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        return ops.dynamic_conv(x, self.qweight, self.w_scale, self.bias, g.stride, g.padding, g.dilation, g.groups)

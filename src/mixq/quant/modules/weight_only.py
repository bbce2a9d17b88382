"""Weight-only ("hybrid") layers: integer weights in the file, float activations and float compute."""

from __future__ import annotations

import torch
from torch import nn

from mixq.export.onnx import kernels as ops
from mixq.quant.modules.conv_args import Int8WeightConv
from mixq.quant.modules.registry import register_qmodule
from mixq.quant.spec import QuantConfig, QuantSpec
from mixq.quant.weights import float_bias, quantize_nbits


def _block_size(spec: QuantSpec, in_features: int) -> int:
    """MatMulNBits wants a power-of-two block >= 16; per-channel uses one block covering all of K."""
    if spec.granularity == "per_group":
        return int(spec.group_size)  # type: ignore[arg-type]
    return max(16, 1 << (in_features - 1).bit_length())


@register_qmodule(nn.Linear, "weight_only")
class WeightOnlyLinear(nn.Module):
    """Linear layer with 4- or 8-bit block-wise weights, running as ONNX Runtime's MatMulNBits.

    Example: ``WeightOnlyLinear(nn.Linear(512, 512), QuantSpec(bits=4, granularity="per_group", group_size=32))``.
    """

    @classmethod
    def from_float(cls, linear: nn.Linear, config: QuantConfig) -> WeightOnlyLinear:
        return cls(linear, config.weight)

    def __init__(self, linear: nn.Linear, spec: QuantSpec) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits = spec.bits
        self.block_size = _block_size(spec, linear.in_features)
        packed, scales = quantize_nbits(linear.weight, spec.bits, self.block_size)
        self.register_buffer("packed", packed)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", float_bias(linear))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.matmul_nbits(x, self.packed, self.scales, self.bias, self.in_features, self.bits,
                                self.block_size)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"block_size={self.block_size}")


@register_qmodule((nn.Conv1d, nn.Conv2d), "weight_only")
class WeightOnlyConv(Int8WeightConv):
    """Conv1d/Conv2d with per-channel int8 weights dequantized at run time (ONNX: DequantizeLinear -> Conv)."""

    @classmethod
    def refusal(cls, conv: nn.Module, config: QuantConfig) -> str | None:
        if config.weight.bits == 4:
            return "4-bit weight-only covers Linear layers (MatMulNBits); use bits=8 for convolutions"
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.geometry.apply(x, ops.dequantize_weight(self.weight, self.w_scale, 0), self.bias)

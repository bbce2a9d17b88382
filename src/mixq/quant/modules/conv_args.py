"""What all quantized convolutions share: geometry, the 1-D/2-D dispatch, the int8 weight storage, and the checks
that decide whether a convolution is quantizable."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mixq.quant.modules.facade import FloatFacade
from mixq.quant.modules.registry import register_check
from mixq.quant.spec import QuantConfig, QuantSpec
from mixq.quant.weights import float_bias, quantize_weight


def conv_nd(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, stride: list[int], padding: list[int],
            dilation: list[int], groups: int) -> torch.Tensor:
    """``F.conv1d`` or ``F.conv2d``, chosen by the weight's rank."""
    conv = F.conv1d if w.dim() == 3 else F.conv2d
    return conv(x, w, bias, stride, padding, dilation, groups)


@dataclass(frozen=True)
class ConvGeometry:
    """Stride, explicit symmetric padding, dilation and groups of a convolution."""

    stride: list[int]
    padding: list[int]
    dilation: list[int]
    groups: int

    @classmethod
    def of(cls, conv: nn.Conv1d | nn.Conv2d) -> ConvGeometry:
        return cls(list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)  # type: ignore[arg-type]

    def apply(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return conv_nd(x, w, bias, self.stride, self.padding, self.dilation, self.groups)


class Int8WeightConv(FloatFacade):
    """Base of the dynamic and weight-only convolutions: per-channel int8 weight (``qweight``), float32 scale and
    bias; ``weight`` is the float32 dequantization (``facade``)."""

    renamed = {"weight": "qweight"}

    @classmethod
    def from_float(cls, conv: nn.Conv1d | nn.Conv2d, config: QuantConfig) -> Int8WeightConv:
        return cls(conv, config.weight)

    def __init__(self, conv: nn.Conv1d | nn.Conv2d, spec: QuantSpec) -> None:
        super().__init__()
        q, scale = quantize_weight(conv.weight, spec, axis=0)
        self.register_buffer("qweight", q)
        self.register_buffer("w_scale", scale)
        self.register_buffer("bias", float_bias(conv))
        self.geometry = ConvGeometry.of(conv)
        self.expose(conv)

    def float_weight(self) -> torch.Tensor:
        from mixq.quant import kernels as ops  # kernels imports this module

        return ops.dequantize_weight(self.qweight, self.w_scale, 0)

    def extra_repr(self) -> str:
        return f"{tuple(self.qweight.shape)}, {self.geometry}"


def unsupported_conv_reason(conv: nn.Module) -> str | None:
    """Why this convolution can't be quantized (None when it can)."""
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} (only 'zeros' maps onto the integer kernels)"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r}; give explicit integer padding to quantize this layer"
    return None


register_check((nn.Conv1d, nn.Conv2d), unsupported_conv_reason)

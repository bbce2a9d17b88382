"""float16 layers (TFLite's "float16 quantization"): weights stored in float16, computed in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixq.quant import kernels as ops
from mixq.quant.modules.conv_args import ConvGeometry
from mixq.quant.modules.facade import FloatFacade
from mixq.quant.modules.registry import register_qmodule
from mixq.quant.spec import QuantConfig


def _half(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().to(torch.float16).clone()


class _Float16Base(FloatFacade):
    """The float16 weight is ``weight_fp16``; ``weight`` is its float32 upcast (``facade``): what the layer computes
    with, and the dtype its input keeps."""

    renamed = {"weight": "weight_fp16"}

    @classmethod
    def from_float(cls, layer: nn.Module, config: QuantConfig) -> nn.Module:
        return cls(layer)

    def describe(self, config: QuantConfig) -> str:
        return "float16 weights"

    def float_weight(self) -> torch.Tensor:
        return ops.upcast(self.weight_fp16)


@register_qmodule(nn.Linear, "fp16")
class Float16Linear(_Float16Base):
    """Linear layer whose weight and bias are stored as float16 and upcast at run time (half the file size)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("weight_fp16", _half(linear.weight))
        self.register_buffer("bias", _half(linear.bias))
        self.expose(linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else ops.upcast(self.bias)
        return F.linear(x, ops.upcast(self.weight_fp16), bias)


@register_qmodule((nn.Conv1d, nn.Conv2d), "fp16")
class Float16Conv(_Float16Base):
    """Conv1d/Conv2d whose weight and bias are stored as float16 and upcast at run time."""

    def __init__(self, conv: nn.Conv1d | nn.Conv2d) -> None:
        super().__init__()
        self.register_buffer("weight_fp16", _half(conv.weight))
        self.register_buffer("bias", _half(conv.bias))
        self.geometry = ConvGeometry.of(conv)
        self.expose(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else ops.upcast(self.bias)
        return self.geometry.apply(x, ops.upcast(self.weight_fp16), bias)

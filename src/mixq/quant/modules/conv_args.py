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


def onnx_pads(padding: list[int], dims: int) -> list[int]:
    """ONNX ``pads`` (all begins, then all ends) of a padding that is symmetric (``dims`` values) or already
    begin/end (``2 * dims`` values)."""
    return list(padding) if len(padding) == 2 * dims else list(padding) * 2


def conv_nd(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, stride: list[int], padding: list[int],
            dilation: list[int], groups: int) -> torch.Tensor:
    """``F.conv1d`` or ``F.conv2d``, chosen by the weight's rank. ``padding`` is one value per spatial axis, or
    ONNX-style begins then ends (``2 * dims`` values: TF-"same" padding folded into the convolution); zeros are
    padded, which for the integer kernels' zero-point-centred input is the zero point, as ONNX Runtime pads."""
    conv, dims = (F.conv1d if w.dim() == 3 else F.conv2d), w.dim() - 2
    if len(padding) == 2 * dims:
        begin, end = list(padding[:dims]), list(padding[dims:])
        if begin != end:
            x = F.pad(x, [p for axis in reversed(range(dims)) for p in (begin[axis], end[axis])])
            begin = [0] * dims
        padding = begin
    return conv(x, w, bias, stride, padding, dilation, groups)


def integer_padding(conv: nn.Conv1d | nn.Conv2d) -> list[int] | None:
    """The convolution's padding as one symmetric integer per spatial axis: ``padding='valid'`` is 0 and
    ``padding='same'`` is ``dilation * (kernel - 1) / 2`` where that is a whole number (odd kernels); None where
    ``'same'`` pads asymmetrically (an even kernel: PyTorch puts the extra row and column at the end)."""
    if not isinstance(conv.padding, str):
        return list(conv.padding)  # type: ignore[arg-type]
    if conv.padding == "valid":
        return [0] * len(conv.kernel_size)
    totals = [d * (k - 1) for k, d in zip(conv.kernel_size, conv.dilation, strict=True)]
    return None if any(t % 2 for t in totals) else [t // 2 for t in totals]


@dataclass(frozen=True)
class ConvGeometry:
    """Stride, explicit padding (symmetric: one value per axis; or begins then ends, ``mixq_pads``: a zero pad
    that graph mode folded into the convolution), dilation and groups of a convolution."""

    stride: list[int]
    padding: list[int]
    dilation: list[int]
    groups: int

    @classmethod
    def of(cls, conv: nn.Conv1d | nn.Conv2d) -> ConvGeometry:
        padding = getattr(conv, "mixq_pads", None) or integer_padding(conv)
        if padding is None:
            raise ValueError(f"padding={conv.padding!r} pads {type(conv).__name__} asymmetrically (an even kernel); "
                             "pad the input with F.pad and give the convolution padding=0 to quantize it")
        return cls(list(conv.stride), padding, list(conv.dilation), conv.groups)  # type: ignore[arg-type]

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
    if integer_padding(conv) is None:
        return (f"padding={conv.padding!r} with kernel {tuple(conv.kernel_size)} pads asymmetrically; pad the input "
                "with F.pad and give the convolution padding=0 to quantize it")
    return None


register_check((nn.Conv1d, nn.Conv2d), unsupported_conv_reason)

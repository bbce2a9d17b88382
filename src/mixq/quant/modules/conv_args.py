"""Shared geometry of Conv1d/Conv2d layers and the checks that decide whether a convolution is quantizable."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


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


def unsupported_conv_reason(conv: nn.Module) -> str | None:
    """Why this convolution can't be quantized (None when it can)."""
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} (only 'zeros' maps onto the integer kernels)"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r}; give explicit integer padding to quantize this layer"
    return None

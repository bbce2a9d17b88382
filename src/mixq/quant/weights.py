"""Weight quantization: per-tensor/per-channel int8 (static, dynamic, int8 weight-only convolutions).
Weights are symmetric (zero point 0), so integer kernels skip the zero-point term. Block-wise n-bit weights for
``MatMulNBits`` live in ``mixq.quant.weight_only.grid``."""

from __future__ import annotations

import torch
from torch import nn

from mixq.quant.primitives import quantize
from mixq.quant.spec import QuantSpec


def weight_scale(weight: torch.Tensor, spec: QuantSpec, axis: int = 0) -> torch.Tensor:
    """The symmetric float32 scale covering ``weight`` (1-D along ``axis`` per channel, 0-d per tensor).

    The same value ``choose_qparams`` gives for the weight's min-max range (``max(-min, max)`` is ``max |w|``), in
    fewer operations: QAT calls this on every training step.
    """
    w = weight.detach().to(torch.float32)
    if spec.granularity == "per_channel":
        absmax = w.abs().amax(dim=[d for d in range(w.dim()) if d != axis % w.dim()])
    else:
        absmax = w.abs().amax()
    scale = absmax / ((spec.qmax - spec.qmin) / 2.0)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize_weight(weight: torch.Tensor, spec: QuantSpec, axis: int = 0,
                    scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 weights and their float32 scale (1-D along ``axis`` per channel, 0-d per tensor).

    ``scale`` defaults to the min-max ``weight_scale``; QAT passes its learned scale. Weights narrower than 8 bits
    are saturated to ``[spec.qmin, spec.qmax]`` and still stored as int8, so the int8 kernels run them.
    """
    scale = weight_scale(weight, spec, axis) if scale is None else scale.detach().to(torch.float32)
    zp = torch.zeros(scale.shape, dtype=torch.int8)
    q = quantize(weight.detach().to(torch.float32), scale, zp, axis=axis if scale.dim() == 1 else None,
                 qmin=spec.qmin, qmax=spec.qmax)
    return q, scale


def float_bias(layer: nn.Module) -> torch.Tensor | None:
    """A detached float32 copy of ``layer.bias`` (None when the layer has none): biases stay float."""
    return None if layer.bias is None else layer.bias.detach().to(torch.float32).clone()


def quantize_bias(bias: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """int32 bias at scale ``x_scale * w_scale`` (the accumulator's scale), as QLinearConv expects."""
    bias_scale = (x_scale * w_scale).to(torch.float64)
    q = torch.round(bias.detach().to(torch.float64) / bias_scale)
    return q.clamp(-(2**31), 2**31 - 1).to(torch.int32)

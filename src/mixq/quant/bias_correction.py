"""Bias correction: take the mean shift that weight rounding causes out of a static layer's bias.

Rounding a layer's weights to int8 moves each output channel's mean by ``(W_q - W) . E[x]``, the same for every
input on average; on layers whose inputs have a large mean (ReLU/ReLU6 outputs) these shifts are systematic and
add up through a network. As in Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction" (2019), empirical form, and NNCF's fast bias correction, ``E[x]`` is each input channel's mean over
the calibration data (gathered by ``ObservedLayer`` while calibrating, after any folded zero pad) and the bias
absorbs the shift. The float model is unchanged; only the static layer's (int32) bias moves.

By default (``bias_correction=None``) only convolutions are corrected: on the ImageNet-pretrained EfficientNet-Lite0
(``benchmarks/bench_pretrained_cnn.py``) it lifts top-1 agreement with fp32 from 0.914 / 0.875 to 0.930 / 0.898
(two crop sets of 128), while on all-MiniLM-L6-v2's Linear layers it changes nothing that matters (mean pooled cos
0.9923 either way), so transformer files stay as they were. ``True`` corrects Linear
layers too, ``False`` nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from mixq.quant.modules.copies import plain_copy
from mixq.quant.spec import QuantSpec
from mixq.quant.weights import quantize_weight

CORRECTABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)  # the layers whose weight layout bias correction knows
_BY_DEFAULT = (nn.Conv1d, nn.Conv2d)


def corrects(setting: bool | None, layer: nn.Module) -> bool:
    """Whether a static ``layer`` is bias corrected under ``bias_correction=setting`` (None: the default, which
    corrects convolutions only; True: every Conv/Linear; False: none)."""
    if setting is False:
        return False
    return isinstance(layer, CORRECTABLE if setting else _BY_DEFAULT)


def channel_sum(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Per-channel sum of ``x`` along ``channel_dim`` (1 for convolutions, -1 for Linear): summed per sample in
    ``x``'s dtype (one image's pixels or one sequence's tokens), then across samples in float64, which costs a
    fraction of a forward where a float64 copy of every input cost more than the layer."""
    x = x.detach()
    dim = channel_dim % x.dim()
    inner = [d for d in range(1, x.dim()) if d != dim]
    per_sample = x.sum(inner) if inner else x
    return per_sample.movedim(dim if dim == 0 else 1, -1).reshape(-1, x.shape[dim]).sum(0, dtype=torch.float64)


def weight_shift(layer: nn.Module, spec: QuantSpec, input_mean: torch.Tensor,
                 quantized: torch.Tensor | None = None) -> torch.Tensor:
    """``(W_q - W) . E[x]`` per output channel: the mean shift rounding ``layer``'s weight per ``spec`` causes,
    for inputs whose per-channel mean is ``input_mean`` (grouped convolutions read their group's channels).
    ``quantized``: the dequantized weight ``W_q`` when it is not round-to-nearest's (AdaRound's)."""
    w = layer.weight.detach().to(torch.float64)
    if quantized is None:
        q, scale = quantize_weight(layer.weight, spec, axis=0)
        scale = scale.to(torch.float64).reshape(-1, *([1] * (w.dim() - 1))) if scale.dim() else scale.double()
        quantized = q.to(torch.float64) * scale
    error = (quantized.to(torch.float64) - w).reshape(w.shape[0], w.shape[1], -1).sum(2)  # [out, in per group]
    groups = getattr(layer, "groups", 1)
    mean = input_mean.to(torch.float64).reshape(groups, -1).repeat_interleave(w.shape[0] // groups, dim=0)
    return (error * mean).sum(1)


def corrected(layer: nn.Module, spec: QuantSpec, input_mean: torch.Tensor,
              quantized: torch.Tensor | None = None) -> nn.Module:
    """A copy of ``layer`` (sharing its weight) whose bias is ``bias - weight_shift``; ``layer`` itself if it has
    no bias."""
    if getattr(layer, "bias", None) is None:
        return layer
    shift = weight_shift(layer, spec, input_mean, quantized).to(layer.bias.dtype)
    fixed = plain_copy(layer)
    fixed.bias = nn.Parameter(layer.bias.detach() - shift, requires_grad=False)
    return fixed

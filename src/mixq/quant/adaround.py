"""AdaRound (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization", 2020): choose, per weight,
whether to round down or up so that the layer's *output* error on calibration inputs is smallest, instead of
rounding each weight to its nearest grid point.

The weight scale stays the min-max per-channel one (so the integer codes, scale and int32 bias export as
round-to-nearest's do); only the codes change, each by at most one step from ``floor(W / s)``. The output error of
a Conv/Linear is a quadratic form in the weight error, ``sum_o dW_o G dW_o^T`` with ``G = E[x x^T]`` the Gram
matrix of the layer's input patches (per group for grouped convolutions), so calibration keeps one ``K x K``
matrix per group (``GramAccumulator``: memory bounded by the layer's fan-in, whatever the amount of data, and every
calibration position counts) and the optimisation never touches activations again; it runs on a factor ``F`` with
``F F^T = G`` (directions with no energy dropped, so a layer seen on few rows, like a classifier on a few dozen
pooled vectors, costs as many columns as rows) plus GPTQ's damping ``d |dW|^2``, which keeps such a layer from
fitting its few calibration inputs alone. The rounding variable follows the paper: a rectified sigmoid ``h(V)``
relaxed between down (0) and up (1), Adam on the output error (in units of round-to-nearest's) plus
``lambda * mean(1 - |2h - 1|^beta)`` with ``beta`` annealed from 20 to 2 after a warm-up without it, so every
``h`` ends at 0 or 1. The result is never worse than round-to-nearest on the layer's calibration error: if it
were, the nearest codes are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mixq.quant.modules.copies import plain_copy
from mixq.quant.spec import QuantSpec
from mixq.quant.weights import weight_scale

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (paper's values)


@dataclass(frozen=True)
class AdaRoundSettings:
    """Optimisation knobs: the paper's schedule (warm-up without the regulariser, ``beta`` annealed from 20 to 2),
    its objective divided by round-to-nearest's error so one ``reg_weight`` suits every layer."""

    iterations: int = 1000
    lr: float = 1e-2
    reg_weight: float = 10.0  # the objective is in units of round-to-nearest's error
    damp: float = 0.01  # as GPTQ's: a multiple of the mean input energy added to the Gram diagonal
    warmup: float = 0.2
    beta: tuple[float, float] = (20.0, 2.0)


DEFAULT_SETTINGS = AdaRoundSettings()


def _patches(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows a Conv/Linear multiplies its weight with: ``[groups, rows, fan_in per group]`` (float64)."""
    x = x.detach().to(torch.float64)
    if isinstance(layer, nn.Linear):
        return x.reshape(1, -1, x.shape[-1])
    if isinstance(layer, nn.Conv1d):
        x = x.unsqueeze(-2)
        kernel, stride = (1, *layer.kernel_size), (1, *layer.stride)
        padding, dilation = (0, *layer.padding), (1, *layer.dilation)
    else:
        kernel, stride, padding, dilation = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # [B, C*k, L]
    groups = layer.groups
    b, ck, length = cols.shape
    return cols.reshape(b, groups, ck // groups, length).permute(1, 0, 3, 2).reshape(groups, b * length, -1)


def supports(layer: nn.Module) -> bool:
    """Whether AdaRound knows ``layer``'s weight layout (Linear, Conv1d, Conv2d with numeric padding)."""
    if isinstance(layer, nn.Linear):
        return True
    return isinstance(layer, (nn.Conv1d, nn.Conv2d)) and not isinstance(layer.padding, str)


class GramAccumulator:
    """Running ``E[x x^T]`` of a layer's input patches per group, float64 sums; ``add`` each calibration input."""

    def __init__(self) -> None:
        self.sum: torch.Tensor | None = None
        self.rows = 0

    def add(self, layer: nn.Module, x: torch.Tensor) -> None:
        rows = _patches(layer, x)
        gram = rows.transpose(1, 2) @ rows
        self.sum = gram if self.sum is None else self.sum + gram
        self.rows += rows.shape[1]

    def result(self) -> torch.Tensor:
        """``[groups, K, K]`` float32."""
        if self.sum is None or self.rows == 0:
            raise ValueError("no calibration inputs reached this layer, so AdaRound has nothing to fit")
        return (self.sum / self.rows).to(torch.float32)


def _grouped(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """``[out, ...]`` -> ``[groups, out per group, fan_in per group]``."""
    return weight.reshape(groups, weight.shape[0] // groups, -1)


def output_error(codes: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``sum_o dW_o G dW_o^T`` summed over groups: the mean squared output error (summed over output channels) of
    the layer with weight ``codes * scale`` instead of ``weight``, on the inputs whose Gram matrix is ``gram``."""
    groups = gram.shape[0]
    delta = _grouped(codes * scale.reshape(-1, *([1] * (weight.dim() - 1))) - weight, groups)
    return ((delta @ gram) * delta).sum()


def _rectified(v: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def _initial_v(rest: torch.Tensor) -> torch.Tensor:
    """``V`` with ``h(V) = rest`` (the fractional part), so the relaxation starts at the float weight."""
    p = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


def _damped_factor(gram: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(F, d)`` with ``F F^T = gram`` per group (``[groups, K, r]``; eigen-directions below 1e-6 of the largest
    dropped, so a Gram matrix of few rows costs ``r`` columns, not ``K``) and ``d`` the per-group damping,
    ``damp * mean(diag gram)``: the objective is ``sum |dW F|^2 + d |dW|^2``."""
    eig, vec = torch.linalg.eigh(gram.to(torch.float64))
    rank = int((eig > 1e-6 * eig[:, -1:].clamp(min=1e-300)).sum(1).max().clamp(min=1))
    factor = vec[:, :, -rank:] * eig[:, -rank:].clamp(min=0).sqrt().unsqueeze(1)
    return factor.to(torch.float32), damp * gram.diagonal(dim1=1, dim2=2).mean(1).to(torch.float32)


def _beta(settings: AdaRoundSettings, step: int, warm: int) -> float:
    """The regulariser's exponent: annealed linearly from ``beta[0]`` to ``beta[1]`` after the warm-up."""
    progress = (step - warm) / max(1, settings.iterations - warm)
    return settings.beta[0] + (settings.beta[1] - settings.beta[0]) * progress


def adaround_codes(weight: torch.Tensor, gram: torch.Tensor, spec: QuantSpec,
                   settings: AdaRoundSettings = DEFAULT_SETTINGS) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes (int8, within ``[spec.qmin, spec.qmax]``) and the min-max scale of ``weight`` ``[out, ...]``
    whose rounding minimises the output error on inputs with Gram matrix ``gram`` ``[groups, K, K]``."""
    w = weight.detach().to(torch.float32)
    scale = weight_scale(w, spec, axis=0)
    s = scale.reshape(-1, *([1] * (w.dim() - 1))) if scale.dim() else scale
    base = torch.floor(w / s)
    nearest = torch.round(w / s).clamp(spec.qmin, spec.qmax)
    gram = gram.to(torch.float32)
    factor, damping = _damped_factor(gram, settings.damp)
    groups = gram.shape[0]

    def objective(codes: torch.Tensor) -> torch.Tensor:
        delta = _grouped(codes * s - w, groups)
        return (delta @ factor).pow(2).sum() + (damping.reshape(-1, 1, 1) * delta.pow(2)).sum()

    norm = objective(nearest).clamp(min=1e-30)  # in units of nearest's error: one lambda fits every layer
    v = _initial_v(w / s - base).requires_grad_(True)
    optimizer = torch.optim.Adam([v], lr=settings.lr)
    warm = int(settings.warmup * settings.iterations)
    for step in range(settings.iterations):
        h = _rectified(v)
        loss = objective((base + h).clamp(spec.qmin, spec.qmax)) / norm
        if step >= warm:
            loss = loss + settings.reg_weight * (1 - (2 * h - 1).abs().pow(_beta(settings, step, warm))).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        codes = (base + (v >= 0).to(base.dtype)).clamp(spec.qmin, spec.qmax)  # h(V) >= 0.5 exactly when V >= 0
        if output_error(codes, scale, w, gram) > output_error(nearest, scale, w, gram):
            codes = nearest
    return codes.to(torch.int8), scale


def dequantized(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``codes * scale`` (per output channel when ``scale`` is 1-D) in float32."""
    return codes.to(torch.float32) * (scale.reshape(-1, *([1] * (codes.dim() - 1))) if scale.dim() else scale)


def on_grid(layer: nn.Module, codes: torch.Tensor, scale: torch.Tensor) -> nn.Module:
    """A copy of ``layer`` (other parameters shared) whose weight is ``codes * scale``: quantizing it with
    ``scale`` gives back ``codes`` exactly."""
    moved = plain_copy(layer)
    moved.weight = nn.Parameter(dequantized(codes, scale).to(layer.weight.dtype), requires_grad=False)
    return moved

"""AWQ (Lin et al., 2024): activation-aware per-input-channel scales, folded into the op that produces the input,
and an optional per-group clipping search.

For layers that share one input ``x`` (q/k/v after a norm, gate/up after a norm, ...) the search tries
``s = mean|x|^a / mean|w|^(1-a)`` for ``a`` on a grid and keeps the scale whose quantized ``(W * s)`` applied to
``x / s`` best matches the float output. ``1/s`` is folded into the producer (a norm's weight and bias, or a
linear layer's rows), ``s`` into the layers' columns, so the float model computes the same function and the
exported graph has no extra op. Works on plain ``[out_features, in_features]`` matrices.
"""

from __future__ import annotations

import torch
from torch import nn

from mixq.quant.weight_only.grid import Grid
from mixq.quant.weight_only.layers import is_linear_like, set_weight_matrix, weight_matrix

SCALE_GRID = 20
CLIP_GRID = 20
CLIP_MAX_SHRINK = 0.5


def _output_error(x: torch.Tensor, weights: list[torch.Tensor], quantized: list[torch.Tensor]) -> float:
    return sum(float(((x @ (w - q).T) ** 2).mean()) for w, q in zip(weights, quantized, strict=True))


@torch.no_grad()
def search_scales(x: torch.Tensor, weights: list[torch.Tensor], grid: Grid) -> torch.Tensor:
    """The per-input-channel scale ``[K]`` minimising the quantization error of ``x @ W.T`` over the layers.

    ``x`` is a sample of the shared input ``[tokens, K]``; ``weights`` the layers' ``[N_i, K]`` matrices. Ratio 0
    (all-ones scale, plain RTN) is among the candidates, so the result is never worse than RTN on the sample.
    """
    x = x.to(torch.float32)
    x_mean = x.abs().mean(dim=0)
    w_all = torch.cat([w.to(torch.float32) for w in weights])
    g = grid.padded(w_all).abs()
    w_norm = (g / g.amax(dim=-1, keepdim=True).clamp_min(1e-12)).reshape(w_all.shape[0], -1)[:, : w_all.shape[1]]
    w_mean = w_norm.mean(dim=0)
    best, best_err = torch.ones_like(x_mean), float("inf")
    for i in range(SCALE_GRID):
        ratio = i / SCALE_GRID
        s = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp_min(1e-4)
        s = s / (s.max() * s.min()).sqrt()
        quantized = [grid.dequantize_matrix(w * s) / s for w in weights]
        err = _output_error(x, weights, quantized)
        if err < best_err:
            best, best_err = s, err
    return best


@torch.no_grad()
def search_clip(x: torch.Tensor, weight: torch.Tensor, grid: Grid, rows_per_chunk: int = 256
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(row, group) scale and zero point from the shrunken range (``1.0`` down to ``0.5`` of min/max) that
    minimises the group's output error on ``x`` ``[tokens, K]``. Returns float32 ``[N, groups]`` each."""
    xg = grid.padded(x.to(torch.float32))  # [T, G, gs]
    w_all = grid.padded(weight)  # [N, G, gs]
    scales, zeros = [], []
    for start in range(0, w_all.shape[0], rows_per_chunk):
        w = w_all[start:start + rows_per_chunk]
        reference = torch.einsum("tgs,ngs->ntg", xg, w)
        lo, hi = w.amin(dim=-1), w.amax(dim=-1)
        best_err = torch.full(lo.shape, float("inf"))
        best_scale, best_zero = grid.params_from_range(lo, hi)
        for i in range(int(CLIP_GRID * CLIP_MAX_SHRINK)):
            shrink = 1 - i / CLIP_GRID
            scale, zero = grid.params_from_range(lo * shrink, hi * shrink)
            q = grid.fake_quantize(w, scale.unsqueeze(-1), zero.unsqueeze(-1))
            err = ((torch.einsum("tgs,ngs->ntg", xg, q) - reference) ** 2).mean(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_scale = torch.where(better, scale, best_scale)
            best_zero = torch.where(better, zero, best_zero)
        scales.append(best_scale)
        zeros.append(best_zero)
    return torch.cat(scales), torch.cat(zeros)


def can_fold_into(producer: nn.Module, channels: int) -> bool:
    """Whether a per-output-channel scale can be folded into ``producer`` (a norm with a per-channel affine
    weight, or a linear layer) feeding ``channels`` inputs."""
    if is_linear_like(producer):
        return weight_matrix(producer).shape[0] == channels
    weight = getattr(producer, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dim() == 1 and weight.shape[0] == channels


@torch.no_grad()
def fold_scales(producer: nn.Module, layers: list[nn.Module], scales: torch.Tensor) -> None:
    """Divide ``producer``'s output channels by ``scales`` and multiply the ``layers``' input columns by them:
    the float function is unchanged (up to rounding)."""
    s = scales.to(torch.float32)
    if is_linear_like(producer):
        w = weight_matrix(producer)
        set_weight_matrix(producer, w.to(torch.float32) / s.unsqueeze(1))
    else:
        producer.weight.div_(s.to(producer.weight.dtype))
    bias = getattr(producer, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.div_(s.to(bias.dtype))
    for layer in layers:
        set_weight_matrix(layer, weight_matrix(layer).to(torch.float32) * s)

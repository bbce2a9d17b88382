"""AWQ: folded scales leave the float function unchanged; the searched scales and clipping beat RTN."""

from __future__ import annotations

import torch
from torch import nn

from mixq.quant.weight_only.awq import fold_scales, search_clip, search_scales
from mixq.quant.weight_only.grid import Grid


def _outlier_inputs(rows: int, k: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=gen)
    x[:, :4] *= 30.0  # a few salient channels, as in LLM activations
    return x


def test_scales_fold_exactly_into_a_layernorm():
    torch.manual_seed(0)
    norm, q, k = nn.LayerNorm(64), nn.Linear(64, 32), nn.Linear(64, 16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    x = torch.randn(10, 64)
    with torch.no_grad():
        before = (q(norm(x)), k(norm(x)))
        fold_scales(norm, [q, k], torch.rand(64) * 4 + 0.25)
        after = (q(norm(x)), k(norm(x)))
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_scales_fold_exactly_into_a_producing_linear():
    torch.manual_seed(1)
    up, down = nn.Linear(32, 64), nn.Linear(64, 32)
    x = torch.randn(10, 32)
    with torch.no_grad():
        before = down(torch.relu(up(x)))  # ReLU commutes with positive per-channel scales
        fold_scales(up, [down], torch.rand(64) * 4 + 0.25)
        after = down(torch.relu(up(x)))
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def _error(x, w, q):
    return float(((x @ (w - q).T) ** 2).mean())


def test_searched_scales_and_clipping_reduce_output_error():
    torch.manual_seed(2)
    grid = Grid(3, 64, True)
    w = torch.randn(48, 128)
    x = _outlier_inputs(1024, 128)
    s = search_scales(x, [w], grid)
    scaled = grid.dequantize_matrix(w * s) / s
    rtn = grid.dequantize_matrix(w)
    assert _error(x, w, scaled) < 0.8 * _error(x, w, rtn)
    xs = x / s
    scale, zero = search_clip(xs, w * s, grid)
    clipped = grid.dequantize_matrix(w * s, scale, zero) / s
    assert _error(x, w, clipped) <= _error(x, w, scaled) * 1.0001

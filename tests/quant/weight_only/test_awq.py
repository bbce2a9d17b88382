"""AWQ: folded scales leave the float function unchanged; the searched scales and clipping beat RTN."""

from __future__ import annotations

import pytest
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


def test_scales_fold_exactly_into_gpt2_layernorm_and_conv1d():
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    from mixq.quant.weight_only.layers import in_out_features, weight_matrix

    torch.manual_seed(3)
    norm, attn = nn.LayerNorm(32), Conv1D(96, 32)  # GPT-2's c_attn: weight stored [in, out]
    assert in_out_features(attn) == (32, 96) and weight_matrix(attn).shape == (96, 32)
    x = torch.randn(6, 32)
    with torch.no_grad():
        before = attn(norm(x))
        fold_scales(norm, [attn], torch.rand(32) * 4 + 0.25)
        after = attn(norm(x))
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_scales_fold_exactly_through_a_swiglu_mlp():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    torch.manual_seed(4)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64)
    norm, mlp = LlamaRMSNorm(32), LlamaMLP(config)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(6, 32)
    with torch.no_grad():
        before = mlp(norm(x))
        fold_scales(norm, [mlp.gate_proj, mlp.up_proj], torch.rand(32) * 4 + 0.25)
        fold_scales(mlp.up_proj, [mlp.down_proj], torch.rand(64) * 4 + 0.25)  # act(gate) * up is linear in up
        after = mlp(norm(x))
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)

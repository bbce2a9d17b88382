"""The core's integer arithmetic (``mixq.quant.kernels``): each op against a float reference on the same grids.

The inputs are on their grids already, so the only error left is the output's rounding: at most half a step of the
output scale (plus float32 noise) where the op requantizes, float32 noise where its output stays float.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixq.quant import kernels
from mixq.quant.primitives import dequantize, dynamic_qparams, quantize

torch.manual_seed(0)
U8 = torch.uint8


def _grid(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x`` on a uint8 grid covering its range: (dequantized x, scale, zero point)."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = torch.tensor((hi - lo) / 255)
    zp = torch.tensor(round(-lo / float(scale)), dtype=U8)
    return dequantize(quantize(x, scale, zp), scale, zp), scale, zp


def _weights(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.randn(shape)
    scale = w.abs().flatten(1).amax(1) / 127
    q = torch.round(w / scale.view(-1, *[1] * (w.dim() - 1))).clamp(-127, 127).to(torch.int8)
    return q, scale


def _output_grid(ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _, scale, zp = _grid(ref)
    return scale, zp


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_qlinear_within_half_an_output_step(bias, relu):
    x, x_scale, x_zp = _grid(torch.randn(5, 16))
    w_q, w_scale = _weights((8, 16))
    b = torch.randn(8) if bias else None
    ref = F.linear(x, dequantize(w_q, w_scale, None, 0), b)
    ref = torch.relu(ref) if relu else ref
    y_scale, y_zp = _output_grid(ref)
    y = kernels.qlinear(x, x_scale, x_zp, w_q.t().contiguous(), w_scale, b, y_scale, y_zp, relu)
    assert (y - ref).abs().max() <= y_scale / 2 + 1e-5


def test_qlinear_without_output_grid_stays_float():
    x, x_scale, x_zp = _grid(torch.randn(3, 16))
    w_q, w_scale = _weights((4, 16))
    y = kernels.qlinear(x, x_scale, x_zp, w_q.t().contiguous(), w_scale, None, None, None, False)
    torch.testing.assert_close(y, F.linear(x, dequantize(w_q, w_scale, None, 0)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("groups", [1, 4], ids=["dense", "grouped"])
def test_qconv_within_half_an_output_step(groups):
    x, x_scale, x_zp = _grid(torch.randn(2, 4, 7, 7))
    w_q, w_scale = _weights((8, 4 // groups, 3, 3))
    bias_q = torch.randint(-500, 500, (8,), dtype=torch.int32)
    b = bias_q.float() * x_scale * w_scale
    ref = F.conv2d(x, dequantize(w_q, w_scale, None, 0), b, 1, 1, 1, groups)
    y_scale, y_zp = _output_grid(ref)
    y = kernels.qconv(x, x_scale, x_zp, w_q, w_scale, bias_q, y_scale, y_zp, [1, 1], [1, 1], [1, 1], groups, False)
    assert (y - ref).abs().max() <= y_scale / 2 + 1e-5


def test_qadd_within_half_an_output_step():
    (a, a_scale, a_zp), (b, b_scale, b_zp) = _grid(torch.randn(4, 6)), _grid(torch.randn(4, 6) * 3)
    y_scale, y_zp = _output_grid(a + b)
    y = kernels.qadd(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp, False)
    assert (y - (a + b)).abs().max() <= y_scale / 2 + 1e-5


def test_qmatmul_is_the_float_product_of_the_grids():
    (a, a_scale, a_zp), (b, b_scale, b_zp) = _grid(torch.randn(2, 5, 8)), _grid(torch.randn(2, 8, 3))
    torch.testing.assert_close(kernels.qmatmul(a, a_scale, a_zp, b, b_scale, b_zp), a @ b, atol=1e-5, rtol=1e-5)
    scaled = kernels.qmatmul(a, a_scale, a_zp, b, b_scale, b_zp, 0.125)  # a power of two: exact either way
    assert torch.equal(scaled, kernels.qmatmul(a, a_scale, a_zp, b, b_scale, b_zp) * 0.125)


def test_dynamic_linear_and_conv_quantize_inputs_per_call():
    x = torch.randn(3, 16)
    x_dq = dequantize(quantize(x, *dynamic_qparams(x)), *dynamic_qparams(x))
    w_q, w_scale = _weights((8, 16))
    b = torch.randn(8)
    ref = F.linear(x_dq, dequantize(w_q, w_scale, None, 0), b)
    torch.testing.assert_close(kernels.dynamic_linear(x, w_q.t().contiguous(), w_scale, b), ref, atol=1e-5,
                               rtol=1e-5)
    xc = torch.randn(1, 2, 5, 5)
    xc_dq = dequantize(quantize(xc, *dynamic_qparams(xc)), *dynamic_qparams(xc))
    wc_q, wc_scale = _weights((3, 2, 3, 3))
    ref = F.conv2d(xc_dq, dequantize(wc_q, wc_scale, None, 0), None, 1, 0)
    y = kernels.dynamic_conv(xc, wc_q, wc_scale, None, [1, 1], [0, 0], [1, 1], 1)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


def test_weight_storage_ops_are_exact():
    q, scale = _weights((6, 4))
    torch.testing.assert_close(kernels.dequantize_weight(q, scale, 0), dequantize(q, scale, None, 0), atol=0, rtol=0)
    idx = torch.tensor([[0, 5, 2]])
    torch.testing.assert_close(kernels.embedding_lookup(idx, q, scale), (q.float() * scale[:, None])[idx],
                               atol=0, rtol=0)
    half = torch.randn(3, 3).half()
    assert kernels.upcast(half).dtype == torch.float32 and torch.equal(kernels.upcast(half), half.float())


def test_row_rounding_puts_each_row_on_its_own_int8_grid_holding_zero():
    x = torch.randn(6, 40) * torch.logspace(-2, 2, 6).unsqueeze(1)  # rows of very different ranges
    x[0] = x[0].abs()  # an all-positive row: its grid still holds 0
    got = kernels.row_rounding(x)
    lo, hi = x.amin(1, keepdim=True).clamp(max=0), x.amax(1, keepdim=True).clamp(min=0)
    step = (hi - lo) / 255
    assert ((got - x).abs() <= step / 2 * (1 + 1e-5)).all()  # half a step of the row's own grid
    levels = (got - got.amin(1, keepdim=True)) / step
    assert torch.allclose(levels, levels.round(), atol=1e-3)  # at most 256 levels a row, a step apart
    assert torch.equal(kernels.row_rounding(torch.zeros(2, 5)), torch.zeros(2, 5))  # an all-zero row stays zero


def test_matmul_nbits_rows_rounds_the_input_per_row_then_multiplies_by_the_nbit_weights():
    from mixq.quant.weight_only.grid import Grid, pack_matmul_nbits

    grid, w, bias = Grid(4, 16), torch.randn(8, 48), torch.randn(8)
    scale, zero = grid.params(w)
    packed, zp, bits = pack_matmul_nbits(grid, grid.quantize_matrix(w, scale, zero), zero)
    x = torch.randn(2, 5, 48) * torch.tensor([1.0, 30.0]).view(2, 1, 1)
    got = kernels.matmul_nbits_rows(x, packed, scale.reshape(-1), zp, bias, 48, bits, 16)
    assert torch.equal(got, F.linear(kernels.row_rounding(x), grid.dequantize_matrix(w, scale, zero), bias))
    assert not torch.equal(got, kernels.matmul_nbits(x, packed, scale.reshape(-1), zp, bias, 48, bits, 16))


def test_qlinear_rows_rounds_the_input_per_row_then_multiplies_in_float():
    x = torch.randn(3, 5, 16) * torch.tensor([1.0, 30.0, 0.1]).view(3, 1, 1)  # one row spans an outlier range
    w_q, w_scale = _weights((8, 16))
    bias = torch.randn(8)
    got = kernels.qlinear_rows(x, w_q.t().contiguous(), w_scale, bias, False)
    ref = F.linear(kernels.row_rounding(x), w_q.float() * w_scale.view(-1, 1), bias)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    exact = F.linear(x, w_q.float() * w_scale.view(-1, 1), bias)
    per_row_error = (got - exact).norm(dim=-1) / exact.norm(dim=-1)
    assert float(per_row_error.max()) < 0.05  # each row on its own grid: the outlier row costs the others nothing
    assert torch.equal(kernels.qlinear_rows(x, w_q.t().contiguous(), w_scale, bias, True), got.relu())

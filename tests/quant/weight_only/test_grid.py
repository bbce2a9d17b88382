"""The group grid: codes within range, exact round trips through MatMulNBits' packing, and ONNX Runtime agreeing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mixq
from mixq.quant.weight_only.grid import Grid, pack_matmul_nbits, unpack_matmul_nbits

CASES = [(bits, sym) for bits in (2, 3, 4, 8) for sym in (True, False)]


@pytest.mark.parametrize("bits, symmetric", CASES, ids=[f"w{b}-{'sym' if s else 'asym'}" for b, s in CASES])
def test_pack_round_trip_equals_fake_quantize(bits, symmetric):
    torch.manual_seed(0)
    grid = Grid(bits, 32, symmetric)
    w = torch.randn(24, 80)  # 80: the last group is zero-padded
    scale, zero = grid.params(w)
    codes = grid.quantize_matrix(w, scale, zero)
    assert int(codes.min()) >= 0 and int(codes.max()) <= 2**bits - 1
    packed, zero_points, stored = pack_matmul_nbits(grid, codes, zero)
    assert stored == (4 if bits == 3 else bits) and (zero_points is None) == symmetric
    unpacked = unpack_matmul_nbits(packed, scale.reshape(-1), zero_points, stored, 80)
    torch.testing.assert_close(unpacked, grid.dequantize_matrix(w, scale, zero), rtol=0, atol=0)
    step = scale.repeat_interleave(32, dim=1)[:, :80]
    assert ((unpacked - w).abs() <= step / 2 + 1e-6).all()  # round to nearest: at most half a step away


ORT_CASES = [(2, False), (3, True), (4, False), (8, False)]


@pytest.mark.parametrize("bits, symmetric", ORT_CASES, ids=[f"w{b}-{'sym' if s else 'asym'}" for b, s in ORT_CASES])
def test_weight_only_layers_match_onnx_runtime(tmp_path, ort_run, bits, symmetric):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 64), nn.GELU(), nn.Linear(64, 8)).eval()
    qmodel = mixq.quantize(model, "weight_only", bits=bits, group_size=32, symmetric=symmetric)
    path = mixq.export_onnx(qmodel, torch.randn(2, 96), tmp_path / "wo.onnx")
    assert mixq.optimized_op_types(path)["MatMulNBits"] == 2
    x = torch.randn(5, 96)
    (out,) = ort_run(path, x)
    with torch.no_grad():
        ref = qmodel(x).numpy()
    assert np.abs(out - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


def test_three_bit_is_recorded_as_stored_in_the_four_bit_layout():
    qmodel = mixq.quantize(nn.Sequential(nn.Linear(64, 8)), "weight_only", bits=3, group_size=32)
    assert "bits=3 (in 4-bit layout)" in repr(qmodel[0])

"""GPTQ on a single layer: never worse than RTN on correlated inputs, exactly RTN with an identity Hessian."""

from __future__ import annotations

import pytest
import torch

from mixq.quant.weight_only.gptq import HessianAccumulator, gptq_quantize
from mixq.quant.weight_only.grid import Grid


def _correlated_inputs(rows: int, k: int, seed: int = 0) -> torch.Tensor:
    """Inputs driven by a few shared factors plus noise (one distribution; ``seed`` draws new samples)."""
    factors = torch.randn(16, k, generator=torch.Generator().manual_seed(100))
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 16, generator=gen) @ factors + 0.1 * torch.randn(rows, k, generator=gen)


def _output_error(x: torch.Tensor, w: torch.Tensor, q: torch.Tensor) -> float:
    return float(((x @ (w - q).T) ** 2).mean())


@pytest.mark.parametrize("bits, group, symmetric, act_order", [
    (4, 32, True, False), (4, 128, False, False), (3, 64, True, True), (2, 32, False, True)])
def test_gptq_beats_rtn_on_correlated_inputs(bits, group, symmetric, act_order):
    torch.manual_seed(1)
    w = torch.randn(48, 128)
    grid = Grid(bits, group, symmetric)
    acc = HessianAccumulator(128)
    x_train = _correlated_inputs(2048, 128)
    acc.add(x_train)
    q, scale, zero = gptq_quantize(w, acc.result(), grid, act_order=act_order)
    assert torch.equal(grid.dequantize_matrix(q, scale, zero), q)  # every value lies on the exported grid
    x_test = _correlated_inputs(1024, 128, seed=5)
    rtn, gptq = _output_error(x_test, w, grid.dequantize_matrix(w)), _output_error(x_test, w, q)
    assert gptq < 0.5 * rtn, (gptq, rtn)


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_with_identity_hessian_is_rtn(symmetric):
    torch.manual_seed(2)
    w = torch.randn(16, 100)  # 100: not a multiple of the group, the last group is padded
    grid = Grid(4, 32, symmetric)
    q, scale, zero = gptq_quantize(w, torch.eye(100), grid)
    rtn_scale, rtn_zero = grid.params(w)
    torch.testing.assert_close(q, grid.dequantize_matrix(w), rtol=0, atol=0)
    torch.testing.assert_close((scale, zero), (rtn_scale, rtn_zero), rtol=0, atol=0)


def test_dead_inputs_get_zero_weight_and_the_rest_still_quantizes():
    torch.manual_seed(3)
    x = _correlated_inputs(512, 64)
    x[:, 5] = 0.0  # an input channel that never fires
    acc = HessianAccumulator(64)
    acc.add(x)
    q, _, _ = gptq_quantize(torch.randn(8, 64), acc.result(), Grid(4, 32))
    assert torch.isfinite(q).all() and (q[:, 5] == 0).all()

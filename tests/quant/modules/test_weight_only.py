"""Weight-only Linears (``mixq.quant.modules.weight_only``): by default they compute what ONNX Runtime's MatMulNBits
does (float32 group scales, float activations); quantized for LiteRT (``runtime="litert"``) what its integer-weight
kernels do: blockwise scales as the file stores them (bfloat16), the input rounded to int8 per row at run time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixq
from mixq.quant.kernels import row_rounding
from mixq.quant.modules import WeightOnlyLinear

K, N, GROUP = 128, 24, 32


def _quantized(runtime: str | None, **options) -> WeightOnlyLinear:
    torch.manual_seed(0)
    layer = nn.Linear(K, N)
    options = options or {"bits": 4, "group_size": GROUP}
    return mixq.quantize(nn.Sequential(layer), "weight_only", runtime=runtime, progress=False, **options)[0]


def _inputs() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(4, 3, K) * torch.tensor([0.01, 1.0, 10.0, 300.0]).view(4, 1, 1)  # rows of any range


def _litert_reference(float_layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """By hand: min-max int4 group scales rounded to bfloat16, codes on those scales, the input rounded per row
    (XNNPACK's arithmetic, ``row_rounding``), then the product with the integer codes, block by block."""
    w = float_layer.weight.detach().reshape(N, -1, GROUP)
    scale = (w.abs().amax(-1) / 7).to(torch.bfloat16).to(torch.float32)
    codes = torch.round(w / scale[..., None]).clamp(-7, 7)
    rows = row_rounding(x).reshape(*x.shape[:-1], -1, GROUP)
    return (torch.einsum("...gk,ngk->...ng", rows, codes) * scale).sum(-1) + float_layer.bias.detach()


def test_quantized_for_litert_it_computes_what_the_litert_kernel_does():
    torch.manual_seed(0)
    float_layer = nn.Linear(K, N)
    layer = _quantized("litert")
    x = _inputs()
    with torch.no_grad():
        got = layer(x)
        float_activations = F.linear(x, layer.float_weight(), layer.bias)
    assert layer.rows
    assert torch.equal(layer.scales, layer.scales.to(torch.bfloat16).to(torch.float32))  # bfloat16 values
    ref = _litert_reference(float_layer, x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().amax()))
    per_row = ((got - float_activations).norm(dim=-1) / float_activations.norm(dim=-1)).min()
    assert float(per_row) > 1e-4  # every row's input was rounded: not the float-activation product


def test_by_default_it_computes_matmul_nbits_on_float32_scales_and_float_activations():
    torch.manual_seed(0)
    float_layer = nn.Linear(K, N)
    layer = _quantized(None)
    x = _inputs()
    w = float_layer.weight.detach().reshape(N, -1, GROUP)
    scale = w.abs().amax(-1) / 7
    assert not layer.rows and torch.equal(layer.scales, scale.reshape(-1))  # float32, not rounded
    assert not torch.equal(layer.scales, layer.scales.to(torch.bfloat16).to(torch.float32))
    codes = torch.round(w / scale[..., None]).clamp(-7, 7)
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, (codes * scale[..., None]).reshape(N, K), float_layer.bias))


def test_litert_keeps_per_channel_scales_in_float32_and_still_rounds_rows():
    default, litert = (_quantized(r, bits=8) for r in (None, "litert"))
    assert torch.equal(litert.scales, default.scales) and torch.equal(litert.packed, default.packed)
    assert litert.rows and not default.rows
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(litert(x), default(row_rounding(x)))


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_calibrated_methods_keep_their_codes_on_the_rounded_scales(method):
    """GPTQ/AWQ choose codes on float32 scales; rounding a scale to bfloat16 (2**-9 relative) moves no int4 code."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(K, K), nn.ReLU(), nn.Linear(K, N))
    calib = [torch.randn(8, K) for _ in range(2)]
    default, litert = (mixq.quantize(model, "weight_only", bits=4, group_size=GROUP, method=method, runtime=r,
                                     calib_data=calib, progress=False) for r in (None, "litert"))
    for a, b in ((default[0], litert[0]), (default[2], litert[2])):
        assert torch.equal(a.packed, b.packed)
        assert torch.equal(b.scales, a.scales.to(torch.bfloat16).to(torch.float32))

"""Dynamic-range and float16 files find mixq's layers by their weight values, wherever litert-torch puts them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("litert_torch", reason="the LiteRT extra is not installed: pip install 'mixq[litert]'")

import mixq  # noqa: E402
from mixq.export.tflite.recipes import _same, profile, rescaled  # noqa: E402


class Nested(nn.Module):
    """The issue's model: a Sequential of two Linears inside a module, and a third Linear beside it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_profile_ignores_layout_and_a_folded_positive_factor():
    w = torch.randn(8, 5).numpy()
    assert _same(profile(w), profile(w.T.copy()))
    assert _same(profile(w), profile((w * np.float32(0.42)).astype(np.float32)))
    assert not _same(profile(w), profile(torch.randn(8, 5).numpy()))


def test_rescaled_finds_a_weight_with_a_folded_layernorm_gamma():
    torch.manual_seed(0)
    q = torch.randint(-127, 128, (24, 16)).double()
    w = (q * torch.rand(24, 1) / 127).numpy()  # mixq's dequantized int8 weight, per-row scales
    gamma, attention = torch.rand(16).numpy() + 0.5, 0.42
    folded = (w * gamma[None, :] * attention).astype(np.float32).astype(np.float64)
    assert rescaled(folded, w) and rescaled(folded.T.copy(), w)
    assert not _same(profile(folded), profile(w))  # the sorted profile alone misses it
    other = (torch.randint(-127, 128, (24, 16)).double() / 127).numpy()
    assert not rescaled(other, w)


@pytest.mark.parametrize("mode, weight_type", [("dynamic", "int8"), ("fp16", "float16")])
def test_nested_mlp_every_quantized_layer_is_in_the_file(tmp_path, mode, weight_type):
    torch.manual_seed(0)
    model, x = Nested().eval(), torch.randn(2, 16)
    qmodel = mixq.quantize(model, mode, example_inputs=x)
    path = mixq.export_tflite(qmodel, x, tmp_path / f"{mode}.tflite")
    info = mixq.inspect_tflite(path)
    fcs = [op for op in info.ops if op.op_type == "FULLY_CONNECTED"]
    assert len(fcs) == 3, info
    if mode == "dynamic":
        assert all(op.input_types[:2] == ("float32", "int8") for op in fcs), info
    else:
        assert sum(op.op_type == "DEQUANTIZE" and op.input_types == ("float16",) for op in info.ops) == 3, info
    assert weight_type in info.size_by_dtype
    out = mixq.TFLiteRunner(path)(x)
    with torch.no_grad():
        np.testing.assert_allclose(out, qmodel(x).numpy(), rtol=0.05, atol=0.05)

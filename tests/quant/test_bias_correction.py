"""Bias correction (``mixq.quant.bias_correction``): the mean shift of weight rounding, and its removal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixq
from mixq.quant.bias_correction import weight_shift
from mixq.quant.spec import DEFAULT_WEIGHT, QuantConfig, QuantSpec
from mixq.quant.weights import quantize_weight

PER_TENSOR = QuantSpec("int8", granularity="per_tensor")


def _dequantized(layer: nn.Module, spec: QuantSpec) -> torch.Tensor:
    q, scale = quantize_weight(layer.weight, spec, axis=0)
    return q.float() * (scale.reshape(-1, *([1] * (q.dim() - 1))) if scale.dim() else scale)


@pytest.mark.parametrize("groups", [1, 2, 8], ids=["dense", "grouped", "depthwise"])
@pytest.mark.parametrize("spec", [DEFAULT_WEIGHT, PER_TENSOR], ids=["per-channel", "per-tensor"])
def test_weight_shift_is_what_rounding_moves_on_a_constant_input(groups, spec):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, groups=groups)
    mean = torch.rand(8) * 3
    x = mean.reshape(1, 8, 1, 1).expand(1, 8, 5, 5)  # every input equal to its channel's mean
    moved = F.conv2d(x, _dequantized(conv, spec), None, groups=groups) - F.conv2d(x, conv.weight, None, groups=groups)
    torch.testing.assert_close(weight_shift(conv, spec, mean).float(), moved[0, :, 0, 0], rtol=1e-4, atol=1e-6)


def test_weight_shift_of_a_linear():
    torch.manual_seed(1)
    linear, mean = nn.Linear(6, 4), torch.rand(6)
    expected = (_dequantized(linear, DEFAULT_WEIGHT) - linear.weight) @ mean
    torch.testing.assert_close(weight_shift(linear, DEFAULT_WEIGHT, mean).float(), expected.detach())


def _net() -> nn.Sequential:
    """A Linear with one weight 50x the others: per-tensor int8 gives the others few steps, and their rounding
    shifts every output's mean on positive inputs."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(32, 8)).eval()
    with torch.no_grad():
        model[0].weight[0, 0] *= 50
    return model


def test_bias_correction_removes_the_mean_shift_and_keeps_the_float_model():
    model = _net()
    calib = [torch.rand(16, 32) * 2 for _ in range(6)]  # positive inputs: rounding shifts every mean
    x = torch.rand(512, 32) * 2
    with torch.no_grad():
        before = model(x)
    options = {"calib_data": calib, "progress": False, "per_channel": False}
    plain = mixq.quantize(model, "static", **options)
    fixed = mixq.quantize(model, "static", bias_correction=True, **options)
    with torch.no_grad():
        shift_plain = (plain(x) - before).mean(0).abs()  # per output, on unseen inputs
        shift_fixed = (fixed(x) - before).mean(0).abs()
        assert torch.equal(model(x), before)  # the float model is untouched
    assert float(shift_fixed.mean()) < 0.25 * float(shift_plain.mean()), (shift_fixed, shift_plain)
    assert "bias corrected" in fixed.mixq_summary.layers[0].detail


def test_bias_correction_is_a_static_option():
    with pytest.raises(ValueError, match="bias_correction=True has no effect in dynamic mode"):
        QuantConfig("dynamic", bias_correction=True)
    config = mixq.make_config("static", bias_correction=True)
    assert QuantConfig.from_dict(config.to_dict()) == config

"""Bias correction (``mixq.quant.bias_correction``): the mean shift of weight rounding, and its removal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixq
from mixq.quant.bias_correction import channel_sum, weight_shift
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


@pytest.mark.parametrize(("shape", "dim"), [((4, 6, 5, 5), 1), ((4, 7, 6), -1), ((3, 6), -1), ((2, 5, 9), 1)],
                         ids=["conv2d", "tokens", "rows", "conv1d"])
def test_channel_sum_is_the_float64_sum_over_every_other_axis(shape, dim):
    x = torch.rand(shape) + 10  # a large mean: float32 summing in another order would show in the last digits only
    expected = x.double().movedim(dim, -1).reshape(-1, x.shape[dim]).sum(0)
    torch.testing.assert_close(channel_sum(x, dim), expected, rtol=1e-7, atol=0)


def _conv_then_linear() -> nn.Sequential:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)).eval()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] *= 40  # per-tensor weights: the other weights get few steps and round far
        model[3].weight[0, 0] *= 40
    return model


@pytest.mark.parametrize(("setting", "conv", "linear"), [(None, True, False), (True, True, True),
                                                         (False, False, False)], ids=["default", "on", "off"])
def test_by_default_convolutions_are_corrected_and_linear_layers_are_not(setting, conv, linear):
    model = _conv_then_linear()
    calib = [torch.rand(8, 4, 6, 6) for _ in range(3)]
    options = {"calib_data": calib, "progress": False, "per_channel": False}
    off = mixq.quantize(model, "static", bias_correction=False, **options)
    q = mixq.quantize(model, "static", **options, **({} if setting is None else {"bias_correction": setting}))
    layers = {r.name: r.detail for r in q.mixq_summary.layers}
    assert ("bias corrected" in layers["0"], "bias corrected" in layers["3"]) == (conv, linear), layers
    biases = {name: m.bias for name, m in q.named_modules() if hasattr(m, "bias") and name in ("0", "3")}
    plain = {name: m.bias for name, m in off.named_modules() if hasattr(m, "bias") and name in ("0", "3")}
    assert [not torch.equal(biases[n], plain[n]) for n in ("0", "3")] == [conv, linear]


def test_bias_correction_must_be_none_true_or_false():
    with pytest.raises(TypeError, match="bias_correction must be None"):
        QuantConfig("static", bias_correction="conv")


def test_a_weight_normalised_conv_is_corrected_without_copying_its_parametrization(tmp_path, ort_run):
    """wav2vec2's positional conv is a weight_norm-parametrized Conv1d, which ``copy.copy`` refuses (it pickles)."""
    torch.manual_seed(3)
    conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(8, 8, 3, padding=1, groups=2), dim=2)
    model = nn.Sequential(nn.ReLU(), conv).eval()
    calib = [torch.rand(4, 8, 16) for _ in range(2)]
    corrected = mixq.quantize(model, "static", calib_data=calib, progress=False)
    plain = mixq.quantize(model, "static", calib_data=calib, progress=False, bias_correction=False)
    assert {r.name: r.detail for r in corrected.mixq_summary.layers}["1"].count("bias corrected") == 1
    with torch.no_grad():
        x = torch.rand(8, 8, 16)
        reference, fixed, rounded = model(x), corrected(x), plain(x)
    assert (fixed - reference).mean(dim=(0, 2)).abs().mean() < (rounded - reference).mean(dim=(0, 2)).abs().mean()
    assert torch.equal(model(x), reference)  # the float model's bias untouched
    path = mixq.export_onnx(corrected, x, tmp_path / "wn.onnx")
    torch.testing.assert_close(torch.from_numpy(ort_run(path, x)[0]), fixed, atol=1e-5, rtol=1e-5)

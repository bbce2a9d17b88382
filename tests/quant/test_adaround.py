"""AdaRound (``mixq.quant.adaround``): learned rounding lowers a layer's output error, stays on the int8 grid, and
the exported file computes what the simulation does."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixq
from mixq.quant.adaround import GramAccumulator, adaround_codes, dequantized, output_error
from mixq.quant.conversion import convert_prepared
from mixq.quant.spec import DEFAULT_WEIGHT, QuantSpec
from mixq.quant.stages import calibrate, prepare, round_weights
from mixq.quant.weights import quantize_weight

LAYERS = {
    "dense conv": lambda: nn.Conv2d(6, 8, 3, stride=2, padding=1),
    "depthwise conv": lambda: nn.Conv2d(8, 8, 3, padding=1, groups=8),
    "grouped conv1d": lambda: nn.Conv1d(8, 4, 3, padding=2, dilation=2, groups=2),
    "linear": lambda: nn.Linear(24, 16),
}


def _inputs(layer: nn.Module, n: int, seed: int) -> torch.Tensor:
    """Non-negative inputs with channel-dependent means (ReLU outputs): the case where rounding errors add up."""
    g = torch.Generator().manual_seed(seed)
    if isinstance(layer, nn.Linear):
        return torch.relu(torch.randn(n, layer.in_features, generator=g) + torch.linspace(-1, 2, layer.in_features))
    shape = (n, layer.in_channels, 9, 9) if isinstance(layer, nn.Conv2d) else (n, layer.in_channels, 17)
    offsets = torch.linspace(-1, 2, layer.in_channels).reshape(1, -1, *([1] * (len(shape) - 2)))
    return torch.relu(torch.randn(*shape, generator=g) + offsets)


@torch.no_grad()
def _output_mse(layer: nn.Module, weight: torch.Tensor, x: torch.Tensor) -> float:
    """Mean over output positions of the squared output error summed over output channels (no bias: it cancels)."""
    if isinstance(layer, nn.Linear):
        delta = F.linear(x, weight - layer.weight)
        return float(delta.pow(2).sum(-1).mean())
    conv = F.conv2d if isinstance(layer, nn.Conv2d) else F.conv1d
    delta = conv(x, weight - layer.weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    return float(delta.pow(2).sum(1).mean())


def _gram(layer: nn.Module, batches: list[torch.Tensor]) -> torch.Tensor:
    acc = GramAccumulator()
    for x in batches:
        acc.add(layer, x)
    return acc.result()


def _nearest(layer: nn.Module, spec: QuantSpec = DEFAULT_WEIGHT) -> tuple[torch.Tensor, torch.Tensor]:
    return quantize_weight(layer.weight, spec, axis=0)


@pytest.mark.parametrize("make", list(LAYERS.values()), ids=list(LAYERS))
def test_gram_form_is_the_measured_output_error(make):
    torch.manual_seed(0)
    layer = make()
    batches = [_inputs(layer, 4, seed) for seed in range(3)]
    codes, scale = _nearest(layer)
    expected = _output_mse(layer, dequantized(codes, scale), torch.cat(batches))
    got = float(output_error(codes.float(), scale, layer.weight.detach(), _gram(layer, batches)))
    assert got == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("make", list(LAYERS.values()), ids=list(LAYERS))
def test_adaround_lowers_the_output_error_on_unseen_inputs_and_stays_on_the_grid(make):
    torch.manual_seed(0)
    layer = make()
    spec = QuantSpec("int8", bits=7, granularity="per_channel")  # a coarser grid: rounding choices matter more
    calib = [_inputs(layer, 16, seed) for seed in range(4)]
    codes, scale = adaround_codes(layer.weight, _gram(layer, calib), spec)
    nearest, nearest_scale = _nearest(layer, spec)
    torch.testing.assert_close(scale, nearest_scale, rtol=0, atol=0)  # the min-max scale: only the codes move
    assert codes.dtype == torch.int8
    assert int(codes.min()) >= spec.qmin and int(codes.max()) <= spec.qmax
    ratio = (layer.weight.detach() / dequantized(torch.ones_like(codes), scale))
    assert bool(((codes.float() - ratio).abs() < 1).all())  # each code is floor or ceil of w / s
    assert bool((codes != nearest).any())
    held_out = _inputs(layer, 64, seed=99)
    learned = _output_mse(layer, dequantized(codes, scale), held_out)
    assert learned < 0.9 * _output_mse(layer, dequantized(nearest, scale), held_out)


def test_adaround_keeps_nearest_codes_when_they_are_already_best():
    layer = nn.Linear(4, 3)
    with torch.no_grad():  # every weight on the grid: rounding to nearest is exact
        layer.weight.copy_(torch.tensor([[127.0, -3, 5, 0], [1, 2, -127, 4], [9, 127, -8, 7]]) / 127)
    codes, _ = adaround_codes(layer.weight, _gram(layer, [_inputs(layer, 32, 0)]), DEFAULT_WEIGHT)
    assert torch.equal(codes, _nearest(layer)[0])


def _net() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU6(), nn.Conv2d(8, 16, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)).eval()


def _batches(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 12, 12, generator=g) for _ in range(n)]


def test_quantize_with_adaround_uses_the_codes_and_its_onnx_file_computes_the_simulation(tmp_path, ort_run):
    model, calib = _net(), _batches(4, 0)
    qmodel = mixq.quantize(model, "static", calib_data=calib, progress=False, adaround=True)
    plain = mixq.quantize(model, "static", calib_data=calib, progress=False)
    details = [row.detail for row in qmodel.mixq_summary.layers if row.status == "quantized" and row.kind != "add"]
    assert details and all("AdaRound weights" in d for d in details), details
    moved = [(a.qweight != b.qweight).any() for a, b in zip(qmodel.modules(), plain.modules(), strict=True)
             if hasattr(a, "qweight")]
    assert any(moved)
    x = _batches(1, 7)[0]
    path = mixq.export_onnx(qmodel, x[:1], tmp_path / "adaround.onnx")
    with torch.no_grad():
        sim = qmodel(x).numpy()
    out = np.concatenate([ort_run(path, x[i:i + 1])[0] for i in range(len(x))])
    np.testing.assert_allclose(out, sim, rtol=0, atol=1e-5)


def test_adaround_with_bias_correction_corrects_for_the_adarounded_weights():
    model, calib = _net(), _batches(4, 0)
    both = mixq.quantize(model, "static", calib_data=calib, progress=False, adaround=True, bias_correction=True)
    rounded = mixq.quantize(model, "static", calib_data=calib, progress=False, adaround=True)
    details = [row.detail for row in both.mixq_summary.layers if "AdaRound" in row.detail]
    assert details and all("bias corrected" in d for d in details)
    for a, b in zip(both.modules(), rounded.modules(), strict=True):
        if hasattr(a, "qweight"):
            assert torch.equal(a.qweight, b.qweight)  # bias correction moves biases only


def test_round_weights_keeps_codes_on_the_prepared_model_and_frees_the_gram_matrices():
    model, calib = _net(), _batches(3, 0)
    config = mixq.make_config("static", adaround=True)
    prepared = prepare(model, config, calib[0])
    calibrate(prepared, calib, progress=False)
    assert round_weights(prepared, progress=False) == len(prepared.observed) == len(prepared.rounded)
    assert all(prepared.model.get_submodule(n).input_gram() is None for n in prepared.observed)
    nearest = convert_prepared(prepared, dataclasses.replace(config, adaround=False))  # the codes are not used
    plain = mixq.quantize(model, "static", calib_data=calib, progress=False)
    for a, b in zip(nearest.modules(), plain.modules(), strict=True):
        if hasattr(a, "qweight"):
            assert torch.equal(a.qweight, b.qweight)
    with pytest.raises(ValueError, match="AdaRound codes were chosen for weights"):
        convert_prepared(prepared, mixq.make_config("static", adaround=True, per_channel=False))

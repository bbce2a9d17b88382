"""Non-finite weights are refused at every entry point, naming the first bad tensor; legitimate infinities
(an additive mask buffer that is not saved, an observer's initial range) are not (issue 23)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import mixq
from mixq.quant.batch_keys import unknown_keys
from mixq.quant.finiteness import NonFiniteWeightsError, check_finite


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()


@pytest.mark.parametrize("value,found", [(float("nan"), "1 NaN value"), (float("inf"), "1 inf value"),
                                         (-float("inf"), "1 inf value")])
def test_a_bad_parameter_is_named(value, found):
    model = _mlp()
    with torch.no_grad():
        model[2].bias[1] = value
    with pytest.raises(NonFiniteWeightsError, match=rf"parameter '2.bias' \(2,\) holds {found}"):
        check_finite(model, "quantize")


def test_every_entry_point_refuses(tmp_path):
    model = _mlp()
    with torch.no_grad():
        model[0].weight[0, 0] = float("inf")
    for call in (lambda: mixq.quantize(model, "dynamic"),
                 lambda: mixq.quantize(model, "weight_only", bits=4, group_size=16),
                 lambda: mixq.export_onnx(model, torch.rand(1, 4), tmp_path / "m.onnx"),
                 lambda: mixq.autoquantize(model, lambda m: 1.0, [torch.rand(2, 4)])):
        with pytest.raises(ValueError, match="'0.weight'"):
            call()
    assert not list(tmp_path.iterdir())


def test_persistent_buffers_are_checked_and_mask_buffers_may_hold_minus_inf():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).eval()
    model[1].running_var[0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match=r"buffer '1.running_var'"):
        check_finite(model, "export")
    masked = _mlp()
    masked.register_buffer("mask", torch.full((3, 3), -float("inf")).triu(1), persistent=False)
    check_finite(masked, "export")
    masked.mask[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="buffer 'mask'"):
        check_finite(masked, "export")


def test_a_finite_model_quantizes():
    assert mixq.quantize(_mlp(), "dynamic", progress=False).mixq_summary.quantized


class _Kwargs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, **kwargs: object) -> torch.Tensor:
        return self.fc(x)


def test_a_batch_key_the_forward_only_swallows_is_warned_about():
    model = _Kwargs().eval()
    assert unknown_keys(model, {"x": torch.rand(1, 4), "labelz": torch.rand(1)}) == ["labelz"]
    assert unknown_keys(_mlp(), {"x": torch.rand(1, 4)}) == []  # no **kwargs: the call itself fails loudly
    with pytest.warns(UserWarning, match=r"\['labelz'\] are not parameters of _Kwargs.forward"):
        mixq.quantize(model, "dynamic", calib_data=[{"x": torch.rand(2, 4), "labelz": torch.rand(2)}],
                      progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mixq.quantize(model, "dynamic", calib_data=[{"x": torch.rand(2, 4)}], progress=False)

"""The conversion stage (``mixq.quant.conversion``): one calibration converted under several configs, the prepared
model left as it was, per-layer modes and refusals in the summary, and observers derived from others' statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixq.quant.conversion import convert_prepared, derive_observer
from mixq.quant.modules import DynamicQuantizedLinear, ObservedLayer, QuantizedConv, QuantizedLinear
from mixq.quant.observers import make_observer
from mixq.quant.spec import DEFAULT_ACTIVATION, LayerOverride, ObserverSpec, QuantConfig
from mixq.quant.stages import calibrate, prepare
from tests.quant.small_net import batches, small_net


def calibrated(config: QuantConfig, **kwargs):
    data = batches()
    prepared = prepare(small_net(), config, data[0], **kwargs)
    calibrate(prepared, data, progress=False)
    return prepared


def rows(qmodel: nn.Module) -> dict[str, tuple[str, str]]:
    return {r.name: (r.status, r.detail) for r in qmodel.mixq_summary.layers}


def test_static_layers_take_their_ranges_from_the_observers():
    prepared = calibrated(QuantConfig("static"))
    qmodel = convert_prepared(prepared)
    assert isinstance(qmodel.get_submodule("0"), QuantizedConv) and qmodel.get_submodule("0").relu
    assert isinstance(qmodel.get_submodule("4"), QuantizedLinear) and qmodel.get_submodule("4").relu
    assert isinstance(qmodel.get_submodule("6"), QuantizedLinear)
    observer = prepared.model.get_submodule("0").input_observer
    scale, zero_point = observer.calculate_qparams()
    assert torch.equal(qmodel.get_submodule("0").x_scale, scale)
    assert torch.equal(qmodel.get_submodule("0").x_zp, zero_point)
    assert all(status == "quantized" for status, _ in rows(qmodel).values())
    assert qmodel.mixq_config == prepared.config


def test_one_calibration_converts_under_many_configs_and_is_left_as_it_was():
    prepared = calibrated(QuantConfig("static"), observe_all=True)
    x = batches(1)[0]
    first = convert_prepared(prepared)
    other = convert_prepared(prepared, QuantConfig("static", overrides=(LayerOverride("6", "dynamic"),
                                                                        LayerOverride("4", "fp32"))))
    again = convert_prepared(prepared)
    assert all(isinstance(prepared.model.get_submodule(n), ObservedLayer) for n in prepared.observed)
    assert torch.equal(first(x), again(x))
    assert isinstance(other.get_submodule("6"), DynamicQuantizedLinear)
    fc1 = other.get_submodule("4")  # kept float; the ReLU fused into it comes back
    assert isinstance(fc1, nn.Sequential) and isinstance(fc1[0], nn.Linear) and isinstance(fc1[1], nn.ReLU)
    assert rows(other)["4"] == ("float", "kept fp32 by a per-layer override")
    assert other.mixq_summary.mode == "static" and first.mixq_summary is not other.mixq_summary


def test_another_observer_is_derived_from_the_same_statistics():
    prepared = calibrated(QuantConfig("static"), collect=ObserverSpec("mse"))
    for name in ("percentile", "minmax"):
        qmodel = convert_prepared(prepared, QuantConfig("static", observer=ObserverSpec(name)))
        assert f"({name})" in rows(qmodel)["6"][1]
    assert {spec.name for _, spec in prepared.qparams_cache} == {"percentile", "minmax"}  # derived once, kept


def test_derive_observer():
    x = torch.linspace(-2.0, 3.0, 101)
    histogram = make_observer(ObserverSpec("percentile"), DEFAULT_ACTIVATION, name="x")
    histogram(x)
    minmax = derive_observer(histogram, ObserverSpec("minmax"))
    direct = make_observer(ObserverSpec("minmax"), DEFAULT_ACTIVATION, name="x")
    direct(x)
    assert all(torch.equal(a, b) for a, b in zip(minmax.calculate_qparams(), direct.calculate_qparams(), strict=True))
    mse = derive_observer(histogram, ObserverSpec("mse"))  # same bins: the histogram loads as it is
    assert torch.equal(mse.histogram, histogram.histogram)
    with pytest.raises(ValueError, match="cannot be derived"):
        derive_observer(direct, ObserverSpec("percentile"))


def test_layers_calibration_never_reached_stay_float_with_the_reason():
    prepared = prepare(small_net(), QuantConfig("static"), batches()[0])  # and never calibrated
    qmodel = convert_prepared(prepared)
    assert {r: status for r, (status, _) in rows(qmodel).items()} == {"0": "float", "4": "float", "6": "float"}
    assert rows(qmodel)["6"][1] == "never executed during calibration"


def test_a_static_layer_that_was_not_observed_is_refused():
    prepared = calibrated(QuantConfig("dynamic"))
    with pytest.raises(ValueError, match="was not observed during calibration"):
        convert_prepared(prepared, QuantConfig("static"))


def test_a_range_that_clips_a_large_share_of_its_values_is_reported_by_name():
    import warnings

    import mixq

    data = batches()
    clipping = QuantConfig("static", observer=ObserverSpec("percentile", percentile=90.0))  # cuts 10 % each side
    with pytest.warns(UserWarning, match=r"clip a large share") as caught:
        qmodel = mixq.quantize(small_net(), clipping, calib_data=data, progress=False)
    assert "\n  0 (input): the 'percentile' range [" in str(caught[0].message)  # one line per tensor, by name
    assert qmodel.mixq_summary.clipped and all("'percentile' range" in line for line in qmodel.mixq_summary.clipped)
    assert any(line.startswith("0 (input): ") for line in qmodel.mixq_summary.clipped)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # min-max clips nothing: no warning
        plain = mixq.quantize(small_net(), "static", calib_data=data, progress=False)
    assert plain.mixq_summary.clipped == []

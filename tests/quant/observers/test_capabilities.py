"""Observer capabilities: each observer class declares what it supports and its autoquantize ladder; the lists of
names, ``make_observer``, ``derive_observer``, the autoquantize ladder and its argument check read them."""

from __future__ import annotations

import pytest
import torch

from mixq.auto import autoquantize
from mixq.auto.ladder import ladder
from mixq.quant.conversion import derive_observer
from mixq.quant.observers import (
    MinMaxObserver,
    ObserverCapabilities,
    make_observer,
    observer_class,
    observer_names,
)
from mixq.quant.observers import base as observers_base
from mixq.quant.spec import DEFAULT_ACTIVATION, ObserverSpec

HISTOGRAM = ("entropy", "mse", "percentile")


@pytest.mark.parametrize("name", observer_names())
def test_every_observer_declares_its_capabilities(name):
    caps = observer_class(name).capabilities
    assert isinstance(caps, ObserverCapabilities)
    histogram = name in HISTOGRAM
    assert caps.statistics == ("histogram" if histogram else "range")
    assert caps.per_channel is caps.streaming is (not histogram)
    for fallback in caps.ladder:  # autoquantize's fallbacks are registered, usable by it, and not the observer
        assert fallback != name and observer_class(fallback).capabilities.autoquant


@pytest.mark.parametrize("wanted, names", [
    (dict(per_channel=True), {"minmax", "moving_average"}),
    (dict(streaming=False), set(HISTOGRAM)),
    (dict(autoquant=True), {"minmax", "entropy", "mse", "percentile"}),
    (dict(autoquant=False), {"moving_average"}),
    (dict(streaming=True, autoquant=True), {"minmax"}),
], ids=["per-channel", "histogram", "autoquant", "not-autoquant", "streaming-autoquant"])
def test_observer_names_filter_by_capability(wanted, names):
    assert set(observer_names(**wanted)) == names


def test_capabilities_validate_themselves():
    with pytest.raises(ValueError, match="statistics must be one of range, histogram"):
        ObserverCapabilities("moments")
    with pytest.raises(ValueError, match="no autoquantize ladder"):
        ObserverCapabilities("range", autoquant=False, ladder=("mse",))


def test_make_observer_refuses_per_channel_for_per_tensor_observers():
    with pytest.raises(ValueError, match="'mse' observer is per-tensor only.*'minmax' or 'moving_average'"):
        make_observer(ObserverSpec("mse"), DEFAULT_ACTIVATION, axis=0)


def _histogram(bins: int = 256):
    source = make_observer(ObserverSpec("mse", bins=bins), DEFAULT_ACTIVATION, name="x")
    source(torch.linspace(-1.0, 3.0, 1000))
    return source


@pytest.mark.parametrize("name", ["percentile", "entropy", "minmax", "moving_average"])
def test_a_histogram_derives_every_per_tensor_kind(name):
    source = _histogram()
    target = derive_observer(source, ObserverSpec(name, bins=256))
    assert type(target) is observer_class(name) and target.has_data
    assert float(target.min_val) == -1.0 and float(target.max_val) == 3.0


@pytest.mark.parametrize("source_spec, target_spec", [
    (ObserverSpec("minmax"), ObserverSpec("percentile", bins=256)),  # no histogram to read percentiles from
    (ObserverSpec("mse", bins=256), ObserverSpec("percentile", bins=512)),  # other bins
], ids=["range-to-histogram", "other-bins"])
def test_derivation_the_statistics_do_not_allow_is_refused(source_spec, target_spec):
    source = make_observer(source_spec, DEFAULT_ACTIVATION)
    source(torch.randn(100))
    with pytest.raises(ValueError, match="cannot be derived"):
        derive_observer(source, target_spec)


@pytest.mark.parametrize("name, observers", [
    ("minmax", ["minmax", "percentile", "mse"]),
    ("mse", ["mse", "percentile"]),
    ("percentile", ["percentile", "mse"]),
    ("entropy", ["entropy", "percentile", "mse"]),
])
def test_the_autoquant_ladder_is_the_declared_one(name, observers):
    rungs = ladder("Linear", "size", ObserverSpec(name, bins=256))
    assert [r.observer.name for r in rungs if r.mode == "static"] == observers
    assert [r.mode for r in rungs if r.mode != "static"] == ["dynamic", "fp16", "fp32"]


class _Custom(MinMaxObserver):
    capabilities = ObserverCapabilities("range", ladder=("mse",))


class _NotForAutoquant(MinMaxObserver):
    capabilities = ObserverCapabilities("range", autoquant=False)


def test_a_new_observer_brings_its_ladder(monkeypatch):
    monkeypatch.setitem(observers_base._REGISTRY, "custom", _Custom)
    rungs = ladder("Linear", "latency", ObserverSpec("custom"))
    assert [r.label for r in rungs] == ["int8 custom", "int8 mse", "dynamic int8", "fp32"]


def test_autoquantize_refuses_an_observer_that_says_so(monkeypatch):
    monkeypatch.setitem(observers_base._REGISTRY, "streaming_only", _NotForAutoquant)
    from mixq.quant.spec import QuantConfig

    config = QuantConfig("static", observer=ObserverSpec("streaming_only"))
    with pytest.raises(ValueError, match="cannot use the 'streaming_only' observer; use the .*minmax"):
        autoquantize(torch.nn.Linear(2, 2), [torch.randn(1, 2)], lambda m: 1.0, config=config)

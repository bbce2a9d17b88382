"""The stages of post-training quantization (``mixq.quant.stages``): ``prepare`` copies, folds, plans and wraps the
static layers in observers; ``calibrate`` runs batches through them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixq.quant.modules import ObservedLayer
from mixq.quant.spec import LayerOverride, ObserverSpec, QuantConfig
from mixq.quant.stages import Prepared, calibrate, prepare
from tests.quant.small_net import LAYERS, batches, small_net


def observed_layers(prepared: Prepared) -> dict[str, ObservedLayer]:
    return {n: m for n, m in prepared.model.named_modules() if isinstance(m, ObservedLayer)}


def test_prepare_copies_folds_and_observes_the_static_layers():
    model = small_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = prepare(model, QuantConfig("static"), batches()[0])
    assert prepared.observed == LAYERS and prepared.plain == [] and prepared.targets == LAYERS
    assert "folded 1 into 0" in prepared.summary.notes
    observed = observed_layers(prepared)
    assert sorted(observed) == LAYERS
    assert observed["0"].relu and observed["4"].relu and not observed["6"].relu
    assert prepared.observer_specs == {n: ObserverSpec() for n in LAYERS}
    # the caller's model is untouched
    assert not any(isinstance(m, ObservedLayer) for m in model.modules())
    assert isinstance(model[1], nn.BatchNorm2d)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_layers_planned_for_another_mode_stay_plain_unless_everything_is_observed():
    config = QuantConfig("static", overrides=(LayerOverride("6", "dynamic"),))
    prepared = prepare(small_net(), config, batches()[0])
    assert prepared.observed == ["0", "4"] and prepared.plain == ["6"]
    assert prepared.targets == ["0", "4", "6"]
    everything = prepare(small_net(), config, batches()[0], observe_all=True)
    assert everything.observed == LAYERS and everything.plain == []


def test_collect_builds_every_observer_from_one_spec():
    collect = ObserverSpec("mse")
    prepared = prepare(small_net(), QuantConfig("static"), batches()[0], collect=collect)
    assert set(prepared.observer_specs.values()) == {collect}
    assert all(type(o.input_observer).__name__ == "MSEObserver" for o in observed_layers(prepared).values())


def test_without_a_probe_nothing_is_folded():
    prepared = prepare(small_net(), QuantConfig("static"), None)
    assert not any("folded" in note for note in prepared.summary.notes)
    assert isinstance(prepared.model.get_submodule("1"), nn.BatchNorm2d)


def test_calibrate_runs_the_batches_through_the_observers():
    prepared = prepare(small_net(), QuantConfig("static"), batches()[0])
    prepared.qparams_cache[("stale", ObserverSpec())] = (torch.ones(1), torch.zeros(1))
    assert calibrate(prepared, batches(3), progress=False, max_batches=2) == 2
    assert prepared.qparams_cache == {}
    for layer in observed_layers(prepared).values():
        assert layer.input_observer.has_data and layer.output_observer.has_data
        assert int(layer.input_observer.num_batches) == 2


@pytest.mark.parametrize("mode", ["dynamic", "weight_only", "fp16"])
def test_modes_without_calibration_observe_nothing(mode):
    prepared = prepare(small_net(), QuantConfig(mode), batches()[0])
    assert prepared.observed == [] and prepared.plain == LAYERS and observed_layers(prepared) == {}

"""``QuantConfig`` is the one place the quantization options are checked: every option that no layer would use is
refused, whether it comes as a config field, as ``quantize``'s keywords or beside ``config=``; nothing is ignored."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch import nn

import mixq
from mixq.quant.spec import (
    DEFAULT_ACTIVATION,
    MODES,
    OPTIONS,
    LayerOverride,
    ObserverSpec,
    QuantConfig,
    QuantSpec,
    WeightMethod,
)
from mixq.quant.weight_only import methods

INT8_ACT = QuantSpec("int8", symmetric=False, granularity="per_tensor", narrow_range=False)

# name: (quantize's keywords, the same request as a config, what the one error line says)
UNUSED = {
    "observer in dynamic mode": (dict(mode="dynamic", observer="mse"),
                                 lambda: QuantConfig("dynamic", observer=ObserverSpec("mse")),
                                 "observer='mse' has no effect in dynamic mode"),
    "observer in weight-only mode": (dict(mode="weight_only", observer="minmax"),
                                     lambda: QuantConfig("weight_only", observer=ObserverSpec()),
                                     "observer='minmax' has no effect in weight_only mode"),
    "bits in fp16 mode": (dict(mode="fp16", bits=4), lambda: QuantConfig("fp16", weight=QuantSpec(bits=4)),
                          "bits=4 has no effect in fp16 mode"),
    "asymmetric weights in fp16 mode": (dict(mode="fp16", symmetric=False),
                                        lambda: QuantConfig("fp16", weight=QuantSpec(symmetric=False)),
                                        "symmetric=False has no effect in fp16 mode"),
    "per-tensor weights in fp16 mode": (dict(mode="fp16", per_channel=False),
                                        lambda: QuantConfig("fp16", weight=QuantSpec(granularity="per_tensor")),
                                        "per_channel=False has no effect in fp16 mode"),
    "per-tensor weights in weight-only mode": (
        dict(mode="weight_only", per_channel=False),
        lambda: QuantConfig("weight_only", weight=QuantSpec(granularity="per_tensor")),
        "per_channel=False has no effect in weight_only mode"),
    "group size in fp16 mode": (dict(mode="fp16", group_size=32),
                                lambda: QuantConfig("fp16", weight=QuantSpec(granularity="per_group", group_size=32)),
                                "group_size=32 has no effect in fp16 mode"),
    "group size in static mode": (dict(mode="static", group_size=32),
                                  lambda: QuantConfig("static", weight=QuantSpec(granularity="per_group",
                                                                                 group_size=32)),
                                  "group_size=32 has no effect in static mode"),
    "group size for a dynamic override": (
        dict(mode="weight_only", bits=4, overrides=[LayerOverride("0", "dynamic")]),
        lambda: QuantConfig("weight_only", weight=QuantSpec(bits=4, granularity="per_group", group_size=128),
                            overrides=(LayerOverride("0", "dynamic"),)),
        "group_size=128 has no effect in the dynamic/static overrides"),
    "int8 activations in dynamic mode": (dict(mode="dynamic", activation_dtype="int8"),
                                         lambda: QuantConfig("dynamic", activation=INT8_ACT),
                                         "activation_dtype='int8' has no effect in dynamic mode"),
    "adaround in dynamic mode": (dict(mode="dynamic", adaround=True), lambda: QuantConfig("dynamic", adaround=True),
                                 "adaround=True has no effect in dynamic mode"),
    "method in dynamic mode": (dict(mode="dynamic", method="gptq"),
                               lambda: QuantConfig("dynamic", method=WeightMethod("gptq")),
                               "method='gptq' has no effect in dynamic mode"),
    "awq in fp16 mode": (dict(mode="fp16", method="awq"), lambda: QuantConfig("fp16", method=WeightMethod("awq")),
                         "method='awq' has no effect in fp16 mode"),
    "smoothquant in weight-only mode": (dict(mode="weight_only", smoothquant=0.5),
                                        lambda: QuantConfig("weight_only", smoothquant=0.5),
                                        "smoothquant applies to the static and dynamic modes"),
    "int8 outputs in dynamic mode": (dict(mode="dynamic", float_outputs=False),
                                     lambda: QuantConfig("dynamic", float_outputs=False),
                                     "float_outputs=False has no effect in dynamic mode"),
    "asymmetric weights in dynamic mode": (dict(mode="dynamic", symmetric=False),
                                           lambda: QuantConfig("dynamic", weight=QuantSpec(symmetric=False)),
                                           "asymmetric weights .* are a weight_only option"),
    "runtime in weight-only mode": (dict(mode="weight_only", runtime="ort"),
                                    lambda: QuantConfig("weight_only", runtime="ort"),
                                    "runtime='ort' has no effect in weight_only mode"),
    "runtime_aware without a runtime": (dict(mode="static", runtime_aware=False),
                                        lambda: QuantConfig("static", runtime_aware=False),
                                        "runtime_aware=False has no effect without a runtime"),
}


@pytest.mark.parametrize("keywords,config,message", list(UNUSED.values()), ids=list(UNUSED))
def test_an_option_no_layer_would_use_is_refused_as_keywords_and_as_a_config(keywords, config, message):
    with pytest.raises(ValueError, match=message) as as_keywords:
        QuantConfig.from_options(**keywords)
    with pytest.raises(ValueError, match=message) as as_config:
        config()
    assert str(as_keywords.value) == str(as_config.value)  # one rule, one message
    with pytest.raises(ValueError, match=message):
        mixq.quantize(nn.Sequential(nn.Linear(8, 8)), **keywords)


SAMPLES = {"observer": "mse", "bits": 4, "group_size": 32, "per_channel": False, "activation_dtype": "int8",
           "reduce_range": True, "symmetric": False, "method": "gptq", "exclude": ["0"],
           "overrides": [LayerOverride("0", "fp32")], "smoothquant": 0.5, "runtime": "ort", "runtime_aware": False,
           "float_outputs": False, "bias_correction": True, "adaround": True}


def test_every_option_has_a_sample():
    assert set(SAMPLES) == set(OPTIONS)


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("default", [False, True], ids=["other value", "default value"])
def test_an_option_beside_config_is_refused_never_ignored(option, default):
    value = QuantConfig.from_options.__kwdefaults__[option] if default else SAMPLES[option]
    expected = f"got config and {option}); put it in the QuantConfig"
    with pytest.raises(ValueError, match=re.escape(expected)):
        mixq.quantize(nn.Sequential(nn.Linear(8, 8)), config=QuantConfig("dynamic"), **{option: value})
    with pytest.raises(ValueError, match=re.escape(expected)):
        mixq.quantize(nn.Sequential(nn.Linear(8, 8)), QuantConfig("dynamic"), **{option: value})


def test_a_config_is_taken_as_the_second_argument_or_as_config():
    model, config = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)), QuantConfig("dynamic", exclude=("1",))
    for q in (mixq.quantize(model, config), mixq.quantize(model, config=config),
              mixq.quantize(model, "dynamic", config=config)):  # the same mode beside it is no conflict
        assert q.mixq_config == config
    with pytest.raises(ValueError, match="got config and mode"):
        mixq.quantize(model, "static", config=config)
    with pytest.raises(ValueError, match="pass the QuantConfig once"):
        mixq.quantize(model, config, config=config)
    with pytest.raises(TypeError, match="config must be a QuantConfig"):
        mixq.quantize(model, config=config.to_dict())


def test_an_unknown_option_names_the_known_ones():
    with pytest.raises(TypeError, match="unknown option 'observers'; its options are observer, bits"):
        mixq.quantize(nn.Sequential(nn.Linear(8, 8)), "static", observers="mse")


def test_keywords_build_the_same_config_as_its_fields():
    assert QuantConfig.from_options() == QuantConfig("static") == mixq.make_config()
    assert QuantConfig.from_options("static", observer="mse", activation_dtype="int8", smoothquant=1) == QuantConfig(
        "static", observer=ObserverSpec("mse"), activation=INT8_ACT, smoothquant=1.0)
    four = QuantConfig.from_options("weight_only", bits=4, symmetric=False, method="awq")
    assert four.weight == QuantSpec(bits=4, symmetric=False, granularity="per_group", group_size=128)
    assert four.method == WeightMethod("awq") and four.observer is None
    assert QuantConfig.from_options("dynamic", reduce_range=True).weight.bits == 7


def test_static_layers_get_the_minmax_observer_unless_one_is_given():
    assert QuantConfig("static").observer == ObserverSpec()
    assert QuantConfig("dynamic").observer is None
    mixed = QuantConfig("dynamic", overrides=(LayerOverride("head", "static"),))
    assert mixed.observer == ObserverSpec() and mixed.choice("head").observer == ObserverSpec()


CONFIGS = {
    "static": QuantConfig("static", observer=ObserverSpec("percentile", percentile=99.9), exclude=("head",)),
    "static with int8 outputs": QuantConfig("static", float_outputs=False),
    "dynamic": QuantConfig("dynamic", smoothquant="auto"),
    "weight only": QuantConfig.from_options("weight_only", bits=4, method=WeightMethod("gptq", act_order=True)),
    "fp16 with overrides": QuantConfig("fp16", overrides=(LayerOverride("a", "static", ObserverSpec("mse")),)),
}


@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
def test_a_config_round_trips_through_its_dict(config):
    assert QuantConfig.from_dict(config.to_dict()) == config


def test_a_file_written_before_observer_could_be_none_still_loads():
    data = QuantConfig("dynamic").to_dict()
    data["observer"] = dataclasses.asdict(ObserverSpec())  # older files stored the default in every mode
    data.pop("smoothquant")
    data.pop("float_outputs")
    assert QuantConfig.from_dict(data) == QuantConfig("dynamic")


def test_types_are_checked_with_the_fix():
    with pytest.raises(TypeError, match=r"exclude=\['head'\]"):
        QuantConfig("static", exclude="head")
    with pytest.raises(TypeError, match="overrides must be a tuple of LayerOverride"):
        QuantConfig("static", overrides=("head",))
    with pytest.raises(TypeError, match="method must be one of 'rtn', 'gptq', 'awq' or a WeightMethod"):
        QuantConfig("weight_only", method=3)
    with pytest.raises(TypeError, match="smoothquant must be a number"):
        QuantConfig("static", smoothquant="yes")
    with pytest.raises(ValueError, match="bits must be between 2 and 8"):
        QuantSpec(bits="4")
    assert QuantConfig("static", exclude=["head"]).exclude == ("head",)


def test_a_weight_method_option_is_refused_by_methods_that_do_not_read_it():
    with pytest.raises(ValueError, match="act_order is a GPTQ option; method 'awq' does not use it"):
        WeightMethod("awq", act_order=True)
    with pytest.raises(ValueError, match="clip is an AWQ option; method 'gptq' does not use it"):
        WeightMethod("gptq", clip=False)
    with pytest.raises(ValueError, match="blockwise is a GPTQ/AWQ option; method 'rtn' does not use it"):
        WeightMethod("rtn", blockwise=False)
    with pytest.raises(ValueError, match="unknown weight method 'hqq'; choose one of rtn, gptq, awq"):
        WeightMethod("hqq")


def test_a_new_weight_method_registers_once(monkeypatch):
    monkeypatch.setattr(methods, "_METHODS", dict(methods._METHODS))

    @methods.register_method("hqq", "damp")
    class HQQWorker(methods.MethodWorker):
        """A stand-in: registering is all a new method does to be named everywhere."""

    assert "hqq" in methods.method_names()
    assert WeightMethod("hqq", damp=0.1).needs_data
    assert "hqq" in _cli_choices("--method")
    with pytest.raises(ValueError, match="'hqq' is already registered"):
        methods.register_method("hqq")


def _cli_choices(flag: str) -> tuple[str, ...]:
    from mixq.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["quantize"]
    return tuple(next(a for a in sub._actions if flag in a.option_strings).choices)


def test_the_cli_lists_the_registered_modes_and_methods():
    assert _cli_choices("--mode") == (*MODES, "fp32")  # fp32: the float baseline file, no quantization
    assert _cli_choices("--method") == methods.method_names()


def test_defaults_are_the_documented_specs():
    config = QuantConfig("static")
    assert config.activation == DEFAULT_ACTIVATION and config.weight.torch_dtype == torch.int8

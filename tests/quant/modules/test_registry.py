"""The layer-kind registry (``mixq.quant.modules.registry``): which module each mode swaps in for each float layer,
lookups through base classes, refusals with their reasons, QAT classes and adapters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mixq
from mixq.qat.embedding import QATEmbedding
from mixq.qat.layers import QATLayer
from mixq.quant.modules import (
    DynamicQuantizedConv,
    DynamicQuantizedLinear,
    Float16Conv,
    Float16Linear,
    QuantizedConv,
    QuantizedEmbedding,
    QuantizedLinear,
    WeightOnlyConv,
    WeightOnlyLinear,
    registry,
)
from mixq.quant.spec import MODES, QuantConfig

LINEAR = {"static": QuantizedLinear, "dynamic": DynamicQuantizedLinear, "weight_only": WeightOnlyLinear,
          "fp16": Float16Linear}
CONV = {"static": QuantizedConv, "dynamic": DynamicQuantizedConv, "weight_only": WeightOnlyConv, "fp16": Float16Conv}
EMBEDDING = {"static": QuantizedEmbedding, "dynamic": QuantizedEmbedding, "weight_only": QuantizedEmbedding}
LAYERS = {
    "Linear": (lambda: nn.Linear(4, 3), LINEAR),
    "Conv1d": (lambda: nn.Conv1d(2, 3, 3), CONV),
    "Conv2d": (lambda: nn.Conv2d(2, 3, 3), CONV),
    "Embedding": (lambda: nn.Embedding(10, 4), EMBEDDING),
}


@pytest.fixture
def isolated(monkeypatch):
    """A copy of the registry's tables, so registrations made by a test vanish after it."""
    monkeypatch.setattr(registry, "_KINDS", {t: registry.LayerKind(k.float_type, dict(k.modules), k.qat, k.check,
                                                                    dict(k.refusals))
                                             for t, k in registry._KINDS.items()})
    monkeypatch.setattr(registry, "_ADAPTERS", dict(registry._ADAPTERS))
    return registry


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layer", LAYERS)
def test_each_mode_swaps_in_the_registered_module(layer, mode):
    make, expected = LAYERS[layer]
    module = make()
    assert registry.is_quantizable(module)
    assert registry.qmodule_class(module, mode) is expected.get(mode)


def test_a_subclass_finds_its_base_class_kind():
    class MyLinear(nn.Linear):
        pass

    layer = MyLinear(4, 3)
    assert registry.kind_of(layer) is registry.kind_of(nn.Linear(1, 1))
    assert registry.qmodule_class(layer, "static") is QuantizedLinear
    assert registry.kind_name(layer) == "MyLinear"


def test_unregistered_layers_are_refused_by_name():
    norm = nn.LayerNorm(4)
    assert registry.kind_of(norm) is None and not registry.is_quantizable(norm)
    assert registry.qmodule_class(norm, "static") is None and registry.qat_class(norm) is None
    assert registry.refusal(norm, "static", QuantConfig("static")) == "no quantized kernel for LayerNorm"


def test_refusals_say_why():
    config = QuantConfig("fp16")
    assert registry.refusal(nn.Embedding(10, 4), "fp16", config) == "fp16 mode keeps embedding tables float32"
    assert "no elements" in registry.refusal(nn.Linear(0, 3), "static", QuantConfig("static"))
    assert registry.refusal(nn.Linear(4, 3), "static", QuantConfig("static")) is None
    # a module class's own refusal: weight-only convolutions need symmetric 8-bit weights
    w4 = QuantConfig.from_options("weight_only", bits=4, group_size=32)
    assert "Linear layers" in registry.refusal(nn.Conv2d(2, 3, 3), "weight_only", w4)


def test_structural_checks_refuse_in_every_mode():
    assert "padding_mode" in registry.structural_refusal(nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"))
    assert registry.structural_refusal(nn.Conv2d(2, 3, 3)) is None
    assert registry.structural_refusal(nn.LayerNorm(4)) is None


def test_qat_classes():
    assert registry.qat_class(nn.Linear(4, 3)) is QATLayer
    assert registry.qat_class(nn.Conv2d(2, 3, 3)) is QATLayer
    assert registry.qat_class(nn.Embedding(10, 4)) is QATEmbedding
    assert registry.is_quantizable(nn.Linear(4, 3), qat=True)
    assert not registry.is_quantizable(nn.LayerNorm(4), qat=True)


def test_quantized_classes_lists_every_registered_module_by_name():
    every = registry.quantized_classes()
    assert list(every) == sorted(every, key=lambda c: c.__name__)
    assert set(LINEAR.values()) | set(CONV.values()) | {QuantizedEmbedding} <= set(every)
    assert set(registry.quantized_classes("static")) == {QuantizedConv, QuantizedLinear, QuantizedEmbedding}


def test_register_a_new_layer_kind(isolated):
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(3))

    @isolated.register_qmodule(Scale, "dynamic", "fp16")
    class QuantizedScale(nn.Module):
        @classmethod
        def refusal(cls, layer, config):
            return "not today"

    isolated.register_refusal(Scale, "static", "scales have no static kernel")
    layer = Scale()
    assert isolated.is_quantizable(layer) and not isolated.is_quantizable(layer, qat=True)
    assert isolated.qmodule_class(layer, "fp16") is QuantizedScale
    assert isolated.refusal(layer, "dynamic", QuantConfig("dynamic")) == "not today"
    assert isolated.refusal(layer, "static", QuantConfig("static")) == "scales have no static kernel"
    assert isolated.refusal(layer, "weight_only", QuantConfig("weight_only")) == "no weight_only kernel for Scale"
    assert QuantizedScale in isolated.quantized_classes("dynamic")


@pytest.mark.parametrize("modes", [(), ("int4",)], ids=["no-mode", "unknown-mode"])
def test_register_qmodule_refuses_bad_modes(isolated, modes):
    with pytest.raises(ValueError, match="register_qmodule needs modes from"):
        isolated.register_qmodule(nn.Linear, *modes)


class Legacy(nn.Module):
    """Stands in for an optional package's layer (registered by its import path, as GPT-2's Conv1D is)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4))


def _legacy_as_linear(legacy: Legacy) -> nn.Linear:
    linear = nn.Linear(4, 3, bias=False)
    linear.weight.data.copy_(legacy.w.data)
    linear.mixq_kind = "Legacy"
    return linear


def test_adapters_turn_a_layer_into_a_registered_kind(isolated):
    path = f"{Legacy.__module__}.{Legacy.__qualname__}"
    isolated.register_adapter(path, _legacy_as_linear)
    model = nn.Sequential(Legacy(), nn.ReLU())
    assert isolated.adapter_of(model[0]) is _legacy_as_linear and isolated.is_quantizable(model[0])
    assert isolated.adapter_of(model[1]) is None and isolated.adapt(model[1]) is model[1]
    isolated.adapt_in_place(model, ["0", "1"])
    assert type(model[0]) is nn.Linear and isinstance(model[1], nn.ReLU)
    assert isolated.kind_name(model[0]) == "Legacy"


class _FlippedLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # a permute a quantized Linear would drop
        return super().forward(x.flip(-1))


class _StandardisedConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # weight standardisation (BiT / NFNet style)
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return self._conv_forward(x, w, self.bias)


def test_a_subclass_overriding_forward_is_left_float_with_the_reason():
    layer = _FlippedLinear(4, 3)
    assert registry.kind_of(layer) is None and not registry.is_quantizable(layer)
    assert registry.refusal(layer, "dynamic", QuantConfig("dynamic")) == (
        "_FlippedLinear overrides Linear.forward: a quantized Linear would drop what it computes")


@pytest.mark.parametrize("mode", ["dynamic", "static", "weight_only", "fp16"])
def test_models_with_overriding_subclasses_are_never_silently_altered(mode):
    torch.manual_seed(0)
    model = nn.Sequential(_StandardisedConv(3, 8, 3), nn.ReLU(), nn.Flatten(), _FlippedLinear(8 * 6 * 6, 10),
                          nn.Linear(10, 4)).eval()
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    q = mixq.quantize(model, mode, calib_data=[x[i:i + 16] for i in range(0, 64, 16)] if mode == "static" else None,
                      example_inputs=x[:4], progress=False)
    # the standardised conv stays float; the flipped Linear's forward ends in F.linear on its own weights, so it is
    # quantized as a Linear with the flip kept in the graph (mixq.quant.functional_layers)
    assert [(r.name, r.status) for r in q.mixq_summary.layers] == [("0", "float"), ("3", "quantized"),
                                                                   ("4", "quantized")]
    with torch.no_grad():
        ref = model(x)
        assert ((q(x) - ref).norm() / ref.norm()).item() < 0.05  # int8 noise on two layers (was ~100 %)

"""LiteRT's lowering table (``mixq.export.tflite.lowering``): each registered mixq module class becomes the plain
module litert-torch converts, with the LiteRT mode it implies and mixq's numbers (no LiteRT needed: PyTorch only)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from mixq.export.tflite import lowering
from mixq.export.tflite.weight_only import WeightOnlyWeights
from mixq.quant.modules import (
    DynamicQuantizedConv,
    DynamicQuantizedLinear,
    Float16Conv,
    Float16Linear,
    QuantizedAdd,
    QuantizedConv,
    QuantizedEmbedding,
    QuantizedLinear,
    QuantizedMatMul,
    WeightOnlyLinear,
)
from mixq.quant.primitives import dequantize
from mixq.quant.spec import DEFAULT_WEIGHT, QuantConfig

U8 = (torch.tensor(0.02), torch.tensor(128, dtype=torch.uint8))
OUT = (torch.tensor(0.05), torch.tensor(128, dtype=torch.uint8))
I8 = (torch.tensor(0.03), torch.tensor(-3, dtype=torch.int8))


class Holder(nn.Module):
    """``op`` inside a model (``lower`` refuses a bare quantized module); passes every input on."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.op = op

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.op(*args)


def _conv() -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(3, 8, 3, padding=1, stride=2)


def _linear() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(32, 8)


def _image() -> tuple[torch.Tensor, ...]:
    return (torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1)),)


def _rows() -> tuple[torch.Tensor, ...]:
    return (torch.randn(2, 32, generator=torch.Generator().manual_seed(1)),)


def _ids() -> tuple[torch.Tensor, ...]:
    return (torch.randint(0, 20, (2, 5), generator=torch.Generator().manual_seed(1)),)


def _embedding() -> nn.Embedding:
    torch.manual_seed(0)
    return nn.Embedding(20, 8)


def _pair() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 16, generator=g), torch.randn(2, 16, generator=g)


def _matmul_pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.rand(2, 4, 16, generator=g), torch.randn(2, 16, 8, generator=g)


# mixq class -> (id, module, inputs, lowered class, LiteRT mode)
Case = tuple[str, Callable[[], nn.Module], Callable[[], tuple], type, str]
CASES: dict[type, list[Case]] = {
    QuantizedConv: [
        ("uint8-relu", lambda: QuantizedConv(_conv(), DEFAULT_WEIGHT, U8, OUT, relu=True), _image, lowering.QDQConv,
         "full_integer"),
        ("int8-no-bias", lambda: QuantizedConv(nn.Conv2d(3, 8, 3, bias=False), DEFAULT_WEIGHT, I8, I8), _image,
         lowering.QDQConv, "full_integer"),
    ],
    QuantizedLinear: [("uint8-relu", lambda: QuantizedLinear(_linear(), DEFAULT_WEIGHT, U8, OUT, relu=True), _rows,
                       lowering.QDQLinear, "full_integer"),
                      ("float-output", lambda: QuantizedLinear(_linear(), DEFAULT_WEIGHT, U8, None), _rows,
                       lowering.HybridLinear, "full_integer")],
    QuantizedMatMul: [("uint8-int8", lambda: QuantizedMatMul(U8, I8), _matmul_pair, lowering.QDQMatMul,
                       "full_integer"),
                      # graph mode folds attention's 1/sqrt(d) into alpha: the lowering must keep it
                      ("alpha", lambda: QuantizedMatMul(U8, I8, alpha=0.125), _matmul_pair, lowering.QDQMatMul,
                       "full_integer")],
    QuantizedAdd: [("uint8", lambda: QuantizedAdd(U8, I8, OUT), _pair, lowering.QDQAdd, "full_integer")],
    DynamicQuantizedLinear: [("linear", lambda: DynamicQuantizedLinear.from_float(_linear(), QuantConfig("dynamic")),
                              _rows, lowering.DynamicRangeWeights, "dynamic_range")],
    DynamicQuantizedConv: [("conv", lambda: DynamicQuantizedConv.from_float(_conv(), QuantConfig("dynamic")), _image,
                            lowering.DynamicRangeWeights, "dynamic_range")],
    Float16Linear: [("linear", lambda: Float16Linear.from_float(_linear(), QuantConfig("fp16")), _rows,
                     lowering.Float16Weights, "float16")],
    Float16Conv: [("conv", lambda: Float16Conv.from_float(_conv(), QuantConfig("fp16")), _image,
                   lowering.Float16Weights, "float16")],
    WeightOnlyLinear: [("int8-per-channel", lambda: WeightOnlyLinear.from_float(_linear(), QuantConfig("weight_only")),
                        _rows, WeightOnlyWeights, "weight_only")],
    QuantizedEmbedding: [("table", lambda: QuantizedEmbedding.from_float(_embedding(), QuantConfig("dynamic")), _ids,
                          lowering.Int8Embedding, None)],  # None: an int8 table fits a file of any mode
}
PARAMS = [pytest.param(*case[1:], id=f"{cls.__name__}-{case[0]}") for cls, cases in CASES.items() for case in cases]


def test_every_registered_lowering_has_a_case():
    assert set(CASES) == set(lowering._TABLE)
    assert {rule.mode for rule in lowering._TABLE.values()} - {None} <= set(lowering.LITERT_MODES)


@pytest.mark.parametrize(("make", "inputs", "lowered_class", "mode"), PARAMS)
def test_lowering_keeps_mixqs_numbers(make, inputs, lowered_class, mode):
    model = Holder(make()).eval()
    args = inputs()
    lowered, modes = lowering.lower(model)
    assert modes == ({"op": mode} if mode is not None else {})
    assert type(lowered.op) is lowered_class
    assert type(model.op) is not lowered_class  # the model itself is left as it was
    with torch.no_grad():
        got, ref = lowered(*args), model(*args)
    if lowered_class is lowering.HybridLinear:  # LiteRT's hybrid kernel: mixq's int8 weight, float input
        q, scale = model.op.weight_t.t(), model.op.w_scale.reshape(-1)
        assert torch.equal(lowered.op.dense.weight, dequantize(q, scale, axis=0))
    elif mode == "full_integer" and model.op.y_scale is None:  # float output: integer products summed in float
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)
    elif mode == "full_integer":  # Q/DQ in float vs mixq's integer kernel: at most one output step apart
        assert torch.all((got - ref).abs() <= float(model.op.y_scale) * (1 + 1e-4))
    elif mode == "weight_only":  # mixq's integer codes times their scales, in a float Linear
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6)
    elif mode in ("float16", None):  # the same upcast weights (float16, or int8 rows times their scales)
        assert torch.equal(got, ref)
    else:  # dynamic range: the float layer holds mixq's int8 weight times its scale, exactly
        q = model.op.weight_t.t() if hasattr(model.op, "weight_t") else model.op.qweight
        assert torch.equal(lowered.op.weight, dequantize(q, model.op.w_scale.reshape(-1), axis=0))


def test_full_integer_weights_are_on_mixqs_grid():
    qconv = QuantizedConv(_conv(), DEFAULT_WEIGHT, U8, OUT)
    lowered = lowering.QDQConv(qconv)
    assert torch.equal(lowered.weight(), dequantize(qconv.qweight, qconv.w_scale, axis=0))
    assert lowered.x_q.zero_point == 0 and lowered.x_q.scale == pytest.approx(0.02)  # uint8 128 -> int8 0


def test_a_float_model_lowers_to_a_copy_with_nothing_lowered():
    model = nn.Sequential(nn.Linear(4, 3))
    lowered, modes = lowering.lower(model)
    assert modes == {} and lowered is not model and type(lowered[0]) is nn.Linear


def test_a_bare_quantized_module_is_refused():
    with pytest.raises(TypeError, match="wrap it in an nn.Sequential"):
        lowering.lower(QuantizedLinear(_linear(), DEFAULT_WEIGHT, U8, OUT))


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode must be one of"):
        lowering.lowers(nn.Linear, "int4")

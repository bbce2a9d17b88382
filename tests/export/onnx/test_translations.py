"""The ONNX translations table (``mixq.export.onnx.translations``): every registered translation is emitted by the
module that calls its op, with the node types it promises, and ONNX Runtime runs the result to the PyTorch numbers."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from mixq.export.onnx import translations  # noqa: E402
from mixq.export.onnx.export import trace_to_onnx  # noqa: E402
from mixq.quant.modules import (  # noqa: E402
    DynamicQuantizedConv,
    DynamicQuantizedLinear,
    Float16Linear,
    QuantizedAdd,
    QuantizedConv,
    QuantizedEmbedding,
    QuantizedLinear,
    QuantizedMatMul,
    WeightOnlyConv,
    WeightOnlyLinear,
)
from mixq.quant.spec import DEFAULT_WEIGHT, QuantConfig  # noqa: E402

U8 = (torch.tensor(0.02), torch.tensor(128, dtype=torch.uint8))  # activations in about [-2.56, 2.54]
OUT = (torch.tensor(0.05), torch.tensor(128, dtype=torch.uint8))
W4 = QuantConfig.from_options("weight_only", bits=4, group_size=16)


class Pair(nn.Module):
    """A module of two inputs as the root of the export (``QuantizedAdd`` / ``QuantizedMatMul``)."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.op = op

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.op(a, b)


def _conv() -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(3, 8, 3, padding=1)


def _linear(bias: bool = True, k: int = 32) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(k, 8, bias=bias)


def _image() -> tuple[torch.Tensor, ...]:
    return (torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1)),)


def _rows() -> tuple[torch.Tensor, ...]:
    return (torch.randn(2, 32, generator=torch.Generator().manual_seed(1)),)


# translation -> (case id, module, example inputs, node types the translation must emit, tolerance in output steps)
Case = tuple[str, Callable[[], nn.Module], Callable[[], tuple], set[str], float]
CASES: dict[str, list[Case]] = {
    "qconv": [("conv-relu", lambda: QuantizedConv(_conv(), DEFAULT_WEIGHT, U8, OUT, relu=True), _image,
               {"QuantizeLinear", "DequantizeLinear", "Conv", "Relu"}, 1.0)],
    "qlinear": [
        ("no-bias", lambda: QuantizedLinear(_linear(bias=False), DEFAULT_WEIGHT, U8, OUT), _rows,
         {"QuantizeLinear", "DequantizeLinear", "MatMul"}, 1.0),
        ("bias-relu", lambda: QuantizedLinear(_linear(), DEFAULT_WEIGHT, U8, OUT, relu=True), _rows,
         {"QuantizeLinear", "MatMulIntegerToFloat", "Relu", "DequantizeLinear"}, 1.0),
        ("float-output", lambda: QuantizedLinear(_linear(), DEFAULT_WEIGHT, U8, None), _rows,
         {"QuantizeLinear", "MatMulIntegerToFloat"}, 0.0),
    ],
    "qmatmul": [("two-activations", lambda: Pair(QuantizedMatMul(U8, U8)),
                 lambda: (torch.randn(2, 4, 8), torch.randn(2, 8, 5)), {"QuantizeLinear", "MatMulIntegerToFloat"},
                 0.0),
                ("scaled-by-1/sqrt(d)", lambda: Pair(QuantizedMatMul(U8, U8, alpha=8 ** -0.5)),
                 lambda: (torch.randn(2, 4, 8), torch.randn(2, 8, 5)), {"QuantizeLinear", "MatMulIntegerToFloat"},
                 0.0)],
    "qadd": [("add-relu", lambda: Pair(QuantizedAdd(U8, U8, OUT, relu=True)),
              lambda: (torch.randn(2, 16), torch.randn(2, 16)), {"QuantizeLinear", "DequantizeLinear", "Add", "Relu"},
              1.0)],
    "dynamic_linear": [("linear", lambda: DynamicQuantizedLinear.from_float(_linear(), QuantConfig("dynamic")),
                        _rows, {"DynamicQuantizeLinear", "MatMulInteger", "Cast", "Mul", "Add"}, 0.0)],
    "dynamic_conv": [("conv", lambda: DynamicQuantizedConv.from_float(_conv(), QuantConfig("dynamic")), _image,
                      {"DynamicQuantizeLinear", "ConvInteger", "Cast", "Mul", "Add"}, 0.0)],
    "matmul_nbits": [("int4-group16", lambda: WeightOnlyLinear.from_float(_linear(), W4), _rows,
                      {"MatMulNBits", "Add"}, 0.0)],
    "embedding_lookup": [("table", lambda: QuantizedEmbedding.from_float(nn.Embedding(20, 8), QuantConfig("dynamic")),
                          lambda: (torch.tensor([[1, 5, 19], [0, 2, 2]]),), {"Gather", "Cast", "Mul"}, 0.0)],
    "dequantize_weight": [("int8-conv", lambda: WeightOnlyConv.from_float(_conv(), QuantConfig("weight_only")),
                           _image, {"DequantizeLinear", "Conv"}, 0.0)],
    "upcast": [("fp16-linear", lambda: Float16Linear.from_float(_linear(), QuantConfig("fp16")), _rows,
                {"Cast", "Gemm"}, 0.0)],
}
PARAMS = [pytest.param(name, *case[1:], id=f"{name}-{case[0]}") for name, cases in CASES.items() for case in cases]


def test_every_registered_translation_has_a_case():
    assert set(CASES) == set(translations._TABLE)
    assert set(translations.translation_table().values()) == set(translations._TABLE.values())


def test_an_unknown_op_is_refused():
    with pytest.raises(ValueError, match="torch.ops.mixq has no op 'nope'"):
        translations.translates("nope")


def _output_step(module: nn.Module) -> float:
    inner = getattr(module, "op", module)
    y_scale = getattr(inner, "y_scale", None)
    return 0.0 if y_scale is None else float(y_scale)


@pytest.mark.parametrize(("name", "make", "inputs", "nodes", "steps"), PARAMS)
def test_translation_emits_its_nodes_and_runs_in_onnx_runtime(name, make, inputs, nodes, steps):
    module = make().eval()
    args = inputs()
    proto = trace_to_onnx(module, args)
    emitted = {n.op_type for n in proto.graph.node}
    assert nodes <= emitted, f"{name}: expected {sorted(nodes)}, got {sorted(emitted)}"
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args, strict=True)}
    (got,) = session.run(None, feeds)
    with torch.no_grad():
        ref = module(*args).numpy()
    assert got.shape == ref.shape
    # quantized outputs may differ by the rounding of one output step; float outputs by float32 accumulation order
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=steps * _output_step(module) + 1e-5)


def test_a_scaled_activation_matmul_folds_its_factor_into_the_kernel():
    module = Pair(QuantizedMatMul(U8, U8, alpha=32 ** -0.5)).eval()
    args = (torch.randn(3, 6, 32), torch.randn(3, 32, 6))
    proto = trace_to_onnx(module, args)
    assert [n.op_type for n in proto.graph.node].count("Mul") == 0  # the factor is A's scale input, folded
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args, strict=True)})
    with torch.no_grad():
        ref = module(*args)
    assert np.array_equal(got, ref.numpy())  # the same multiplier, the same float32 rounding
    unscaled = Pair(QuantizedMatMul(U8, U8))(*args) * 32 ** -0.5
    torch.testing.assert_close(ref, unscaled, rtol=4e-7, atol=0)  # the float Mul after it: a few roundings apart

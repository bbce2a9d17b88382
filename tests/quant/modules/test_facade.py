"""The replaced layer's face (``mixq.quant.modules.facade``): model code that reads its layers' ``weight`` and
hyper-parameters, as Hugging Face code does, quantizes in every mode, stays within int8 noise of fp32, and its ONNX
file still holds integer weights."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixq
from mixq.export import FLOAT_COMPUTE
from mixq.quant.modules import DynamicQuantizedConv, Float16Linear, QuantizedEmbedding
from mixq.quant.spec import DEFAULT_WEIGHT

# relative error vs fp32 of the model below: int8 activations and weights, weights only, float16 weights
FLOOR = {"static": 0.05, "dynamic": 0.05, "qat": 0.05, "weight_only": 0.02, "fp16": 0.002}
MODES = tuple(FLOOR)


def _same_padding(x: torch.Tensor, conv: nn.Module) -> list[int]:
    """TensorFlow's "SAME" padding, as transformers' MobileNetV2 computes it from the layer's attributes."""
    pads = []
    for size, stride, kernel, dilation in zip(x.shape[-1:-3:-1], conv.stride[::-1], conv.kernel_size[::-1],
                                              conv.dilation[::-1], strict=True):
        total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return pads


class ReadsItsLayers(nn.Module):
    """Reads its layers as Hugging Face models do: casts the input to ``conv.weight.dtype`` (ViT), pads from
    ``stride``/``kernel_size``/``dilation`` (MobileNetV2), reads a table whole (DeBERTa's relative positions) and
    compares against ``fc.weight.dtype`` (T5)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=2)
        self.table = nn.Embedding(4, 16)
        self.fc = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.conv.weight.dtype)
        y = torch.relu(self.conv(F.pad(x, _same_padding(x, self.conv)))).mean((2, 3))
        y = y + self.table.weight.mean(0)
        if y.dtype != self.fc.weight.dtype:
            y = y.to(self.fc.weight.dtype)
        return self.fc(y)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return ReadsItsLayers().eval()


def _x(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 15, 15, generator=torch.Generator().manual_seed(seed))


def _quantize(model: nn.Module, mode: str, reduce_range: bool) -> nn.Module:
    calib = [_x(8, seed) for seed in range(4)]
    if mode == "qat":
        qat = mixq.prepare_qat(model, example_inputs=calib[0])
        qat.train()
        with torch.no_grad():
            for batch in calib:
                qat(batch)
        qmodel = mixq.convert(qat.eval())
        assert torch.equal(qat(calib[0]), qmodel(calib[0]))  # eval-mode QAT reads the same weights as convert
        return qmodel
    if mode == "static":
        return mixq.quantize(model, "static", calib_data=calib, progress=False, reduce_range=reduce_range)
    options = {"reduce_range": reduce_range} if mode == "dynamic" else {}
    return mixq.quantize(model, mode, example_inputs=calib[0], **options)


@pytest.mark.parametrize("mode", MODES)
def test_model_reading_its_layers_quantizes_exports_and_stays_close(mode, tmp_path, ort_run, reduce_range):
    model = _model()
    qmodel = _quantize(model, mode, reduce_range)
    assert {r.name for r in qmodel.mixq_summary.quantized} >= {"conv", "fc"}
    x = _x(5, 100)
    with torch.no_grad():
        ref, out = model(x), qmodel(x)
    assert float((out - ref).norm() / ref.norm()) <= FLOOR[mode]
    path = mixq.export_onnx(qmodel, _x(2, 7), tmp_path / f"{mode}.onnx")
    (runtime,) = ort_run(path, x)
    np.testing.assert_allclose(runtime, out.numpy(), rtol=1e-4, atol=1e-4)
    initializers = onnx.load(str(path)).graph.initializer
    float_shapes = {tuple(t.dims) for t in initializers if t.data_type == onnx.TensorProto.FLOAT}
    # the weights the model reads are not baked into the file as float constants
    assert not float_shapes & {(16, 3, 3, 3), (8, 16), (16, 8)}, float_shapes
    stored = onnx.TensorProto.FLOAT16 if mode == "fp16" else onnx.TensorProto.INT8
    assert stored in {t.data_type for t in initializers}
    if mode in ("static", "dynamic", "qat"):  # and ONNX Runtime runs them as integer kernels
        ops = mixq.optimized_op_types(path)
        assert not set(ops) & FLOAT_COMPUTE, ops


def test_static_takes_graph_mode_with_the_table_read_whole_left_float(reduce_range):
    """Static quantization captures this model with torch.export: the model's code (reading its layers) no longer
    runs, its F.pad merges into the conv, and the table it reads whole (not called as a layer) stays float."""
    summary = _quantize(_model(), "static", reduce_range).mixq_summary
    assert any(n.startswith("graph mode (torch.export)") for n in summary.notes), summary.notes
    table = next(r for r in summary.layers if r.name == "table")
    assert (table.status, table.detail) == ("float", "the captured graph reads its weight directly instead of "
                                                     "calling it as one layer")


@pytest.mark.parametrize("mode", ("dynamic", "weight_only", "fp16"))  # the layer-by-layer modes: the model's code runs
def test_quantized_layers_show_the_float_layers_attributes(mode, reduce_range):
    model = _model()
    qmodel = _quantize(model, mode, reduce_range)
    for name in ("conv", "fc"):
        layer, float_layer = qmodel.get_submodule(name), model.get_submodule(name)
        for attr in type(float_layer).__constants__:
            assert getattr(layer, attr) == getattr(float_layer, attr), (name, attr)
        w = layer.weight
        assert w.dtype == torch.float32 and w.shape == float_layer.weight.shape
        step = float_layer.weight.abs().amax() / 127
        assert float((w - float_layer.weight).abs().max().detach()) <= step  # int8 rounding at most (float16 far less)


def test_weight_is_dequantized_on_access_not_stored():
    conv = nn.Conv1d(4, 6, 3, stride=2, padding=1)
    layer = DynamicQuantizedConv(conv, DEFAULT_WEIGHT)
    assert "weight" not in dict(layer.named_buffers()) and layer.qweight.dtype == torch.int8
    assert layer.weight is not layer.weight  # computed each time, never cached
    torch.testing.assert_close(layer.weight, layer.qweight.float() * layer.w_scale.reshape(-1, 1, 1))
    assert (layer.stride, layer.padding, layer.kernel_size, layer.in_channels) == ((2,), (1,), (3,), 4)
    with pytest.raises(AttributeError, match="quantize it again"):
        layer.weight = torch.zeros(6, 4, 3)


def test_state_dicts_saved_with_the_int8_weight_as_weight_still_load():
    table = QuantizedEmbedding(nn.Embedding(5, 3), DEFAULT_WEIGHT)
    legacy = {"weight": table.qweight.clone(), "w_scale": table.w_scale.clone()}
    fresh = QuantizedEmbedding(nn.Embedding(5, 3), DEFAULT_WEIGHT)
    fresh.load_state_dict(legacy)
    assert torch.equal(fresh.qweight, table.qweight)
    half = Float16Linear(nn.Linear(3, 2))
    loaded = Float16Linear(nn.Linear(3, 2))
    loaded.load_state_dict({"weight": half.weight_fp16.clone(), "bias": half.bias.clone()})
    assert torch.equal(loaded.weight_fp16, half.weight_fp16)


def test_a_module_without_weight_has_no_weight_attribute():
    from mixq.quant.modules import QuantizedAdd

    one = (torch.tensor(0.1), torch.tensor(128, dtype=torch.uint8))
    assert not hasattr(QuantizedAdd(one, one, one), "weight")


def test_wrappers_answer_from_the_float_layer():
    model = _model()
    qat = mixq.prepare_qat(model, example_inputs=_x(2, 0))
    conv = qat.get_submodule("conv")
    assert conv.weight is conv.layer.weight and conv.stride == (2, 2) and conv.kernel_size == (3, 3)
    with pytest.raises(AttributeError):
        conv.no_such_attribute  # noqa: B018


def test_the_bench_guard_still_finds_an_int8_position_table(tmp_path):
    from mixq.cli.bench_checks import position_rows

    model = nn.Sequential()
    model.add_module("position_embeddings", nn.Embedding(12, 4))
    qmodel = mixq.quantize(model, "dynamic")
    path = mixq.export_onnx(qmodel, torch.arange(3).reshape(1, 3), tmp_path / "table.onnx")
    assert position_rows(path) == 12  # stored as position_embeddings.qweight

"""ONNX export: integer kernels after ONNX Runtime's optimisation, numbers that agree, files that stay whole."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import mixq
from mixq.export import FLOAT_COMPUTE


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(4, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 64), nn.ReLU(), nn.Linear(64, 5)
    ).eval()


def _x(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 4, 16, generator=torch.Generator().manual_seed(2))


def _initializer_types(path) -> set[int]:
    return {t.data_type for t in onnx.load(str(path)).graph.initializer}


def test_dynamic_mode_runs_integer_kernels(tmp_path, ort_run, reduce_range):
    qmodel = mixq.quantize(_net(), "dynamic", reduce_range=reduce_range)
    path = mixq.export_onnx(qmodel, _x(2), tmp_path / "dyn.onnx")
    ops = mixq.optimized_op_types(path)
    assert ops["ConvInteger"] == 1
    assert ops["DynamicQuantizeMatMul"] + ops["MatMulIntegerToFloat"] == 2
    assert not set(ops) & FLOAT_COMPUTE, ops
    x = _x(9)
    (out,) = ort_run(path, x)
    with torch.no_grad():
        ref = qmodel(x).numpy()
    # float outputs: only float32 rounding separates the two (the integer parts are exact)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max() + 1e-6


def test_static_conv1d_and_linears(tmp_path, ort_run, within_steps, reduce_range):
    model = _net()
    qmodel = mixq.quantize(model, "static", calib_data=[_x(16) for _ in range(3)], progress=False,
                           reduce_range=reduce_range)
    path = mixq.export_onnx(qmodel, _x(2), tmp_path / "static.onnx")
    ops = mixq.optimized_op_types(path)
    assert ops["QLinearConv"] == 1 and ops["MatMulIntegerToFloat"] == 2 and not set(ops) & FLOAT_COMPUTE, ops
    assert onnx.TensorProto.INT8 in _initializer_types(path)
    x = _x(50)
    (out,) = ort_run(path, x)
    with torch.no_grad():
        ref = qmodel(x).numpy()
    assert within_steps(out, ref, qmodel[5].y_scale) >= 0.999


@pytest.mark.parametrize("bits, group_size", [(4, 32), (4, None), (8, None)])
def test_weight_only_linear_exports_to_matmul_nbits(tmp_path, ort_run, bits, group_size):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(480, 256), nn.GELU(), nn.Linear(256, 8)).eval()  # 480: K not a block multiple
    qmodel = mixq.quantize(model, "weight_only", bits=bits, group_size=group_size)
    path = mixq.export_onnx(qmodel, torch.randn(2, 480), tmp_path / "wo.onnx")
    fp32_path = mixq.export_onnx(model, torch.randn(2, 480), tmp_path / "fp32.onnx")
    ops = mixq.optimized_op_types(path)
    assert ops["MatMulNBits"] == 2 and not set(ops) & FLOAT_COMPUTE, ops
    x = torch.randn(7, 480)
    (out,) = ort_run(path, x)
    with torch.no_grad():
        ref, fp32 = qmodel(x).numpy(), model(x).numpy()
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()
    assert np.abs(ref - fp32).max() <= (0.2 if bits == 4 else 0.02) * np.abs(fp32).max()
    assert path.stat().st_size <= fp32_path.stat().st_size * (0.2 if bits == 4 else 0.3)


def test_weight_only_conv_is_reported_for_four_bits():
    qmodel = mixq.quantize(_net(), "weight_only", bits=4, group_size=32)
    rows = {r.name: r for r in qmodel.mixq_summary.layers}
    assert rows["0"].status == "float" and "bits=8" in rows["0"].detail


def test_fp16_keeps_float16_weights_and_float32_io(tmp_path, ort_run):
    model = _net()
    qmodel = mixq.quantize(model, "fp16")
    path = mixq.export_onnx(qmodel, _x(2), tmp_path / "fp16.onnx")
    graph = onnx.load(str(path)).graph
    weights = [t for t in graph.initializer if len(t.dims) >= 2]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = _x(5)
    (out,) = ort_run(path, x)
    with torch.no_grad():
        assert np.abs(out - qmodel(x).numpy()).max() <= 1e-4
        assert np.abs(out - model(x).numpy()).max() <= 1e-2


def test_fp16_with_float16_inputs_and_outputs_on_request(tmp_path, ort_run):
    qmodel = mixq.quantize(_net(), "fp16")
    path = mixq.export_onnx(qmodel, _x(2), tmp_path / "fp16_io.onnx", io_dtype=torch.float16)
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    x = _x(5)
    (out,) = ort_run(path, x.half())
    assert out.dtype == np.float16
    with torch.no_grad():
        ref = qmodel(x.half().float()).numpy()
    assert np.abs(out.astype(np.float32) - ref).max() <= 2e-3 * max(1.0, np.abs(ref).max())


def test_static_export_is_much_smaller_than_fp32(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256)).eval()
    fp32 = mixq.export_onnx(model, torch.randn(2, 256), tmp_path / "fp32.onnx")
    qmodel = mixq.quantize(model, "static", calib_data=[torch.randn(8, 256)], progress=False)
    int8 = mixq.export_onnx(qmodel, torch.randn(2, 256), tmp_path / "int8.onnx")
    assert int8.stat().st_size <= 0.3 * fp32.stat().st_size


def test_fixed_batch_export(tmp_path, ort_run):
    qmodel = mixq.quantize(_net(), "dynamic")
    path = mixq.export_onnx(qmodel, _x(3), tmp_path / "fixed.onnx", dynamic_shapes=False)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 3
    assert ort_run(path, _x(3))[0].shape == (3, 5)


# --- refusals and failures ------------------------------------------------------------------------------------

def test_low_opset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="opset 11 cannot express per-channel"):
        mixq.export_onnx(mixq.quantize(_net(), "dynamic"), _x(2), tmp_path / "m.onnx", opset=11)


def test_unsupported_io_dtype(tmp_path):
    with pytest.raises(ValueError, match="io_dtype must be"):
        mixq.export_onnx(_net(), _x(2), tmp_path / "m.onnx", io_dtype=torch.bfloat16)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mixq.export_onnx(_net(), _x(2), tmp_path / "nope" / "m.onnx")


def test_failed_export_leaves_no_file(tmp_path):
    target = tmp_path / "m.onnx"
    with pytest.raises(mixq.ExportError, match=r"Tensor\(2, 3\)"):
        mixq.export_onnx(_net(), torch.randn(2, 3), target)
    assert list(tmp_path.iterdir()) == []


def test_failed_export_keeps_an_existing_file(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous good model")
    with pytest.raises(mixq.ExportError):
        mixq.export_onnx(_net(), torch.randn(2, 3), target)
    assert target.read_bytes() == b"previous good model"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


class _Head(nn.Module):
    """Two Linears whose outputs graph mode keeps float: ``body`` is read through a select, ``head`` is the output
    (the shape branch keeps torch.fx out)."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.body(x))
        return self.head(h[:, 0] if h.shape[1] > 1 else h.squeeze(1))


def test_a_model_quantized_for_litert_is_refused_in_one_line(tmp_path):
    torch.manual_seed(0)
    calib = [torch.randn(2, 3, 8) for _ in range(4)]
    qmodel = mixq.quantize(_Head().eval(), "static", calib_data=calib, runtime="litert", progress=False)
    assert qmodel.head.y_scale is None and qmodel.head.rows  # rounds its input per row, as LiteRT does
    with pytest.raises(mixq.ExportError, match=r"^layer 'body' \(2 in all\) was quantized for LiteRT[^\n]*$"):
        mixq.export_onnx(qmodel, calib[0], tmp_path / "litert.onnx")
    assert not (tmp_path / "litert.onnx").exists()
    ort = mixq.quantize(_Head().eval(), "static", calib_data=calib, progress=False)  # the default: ONNX Runtime's
    assert not ort.head.rows
    mixq.export_onnx(ort, calib[0], tmp_path / "ort.onnx")


def test_a_weight_only_model_quantized_for_litert_is_refused_in_one_line(tmp_path):
    """Its weight-only Linears round their input per row (and hold bfloat16 block scales), as LiteRT's kernels do;
    MatMulNBits keeps the input float, so the file could not compute what the model does."""
    model, x = _net(), _x()
    litert = mixq.quantize(model, "weight_only", bits=4, group_size=32, runtime="litert", progress=False)
    with pytest.raises(mixq.ExportError, match=r"^layer '3' \(2 in all\) was quantized for LiteRT[^\n]*$"):
        mixq.export_onnx(litert, x, tmp_path / "litert.onnx")
    assert not (tmp_path / "litert.onnx").exists()
    mixq.export_onnx(mixq.quantize(model, "weight_only", bits=4, group_size=32, progress=False), x,
                     tmp_path / "ort.onnx")

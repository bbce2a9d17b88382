"""Static int8 PTQ on models trained on digits: accuracy within 1 point of fp32, and ONNX Runtime agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mixq
from mixq.export import FLOAT_COMPUTE, INTEGER_KERNELS


def _calibration(x: torch.Tensor, shape: tuple[int, ...]) -> list[torch.Tensor]:
    return [x[i:i + 100].reshape(-1, *shape) for i in range(0, 500, 100)]


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse", "entropy", "moving_average"])
def test_static_mlp_keeps_accuracy(trained_mlp, digits, accuracy, observer):
    qmodel = mixq.quantize(trained_mlp, "static", calib_data=_calibration(digits["x_train"], (64,)),
                           observer=observer, progress=False)
    fp32 = accuracy(trained_mlp, digits["x_test"], digits["y_test"])
    int8 = accuracy(qmodel, digits["x_test"], digits["y_test"])
    assert fp32 > 0.9
    assert fp32 - int8 <= 0.01, f"{observer}: fp32 {fp32:.4f} vs int8 {int8:.4f}"
    assert len(qmodel.mixq_summary.quantized) == 3


def test_static_cnn_keeps_accuracy_and_matches_ort(trained_cnn, digits, accuracy, ort_run, within_steps, tmp_path,
                                                   reduce_range):
    x_test = digits["x_test"].reshape(-1, 1, 8, 8)
    qmodel = mixq.quantize(trained_cnn, "static", calib_data=_calibration(digits["x_train"], (1, 8, 8)),
                           reduce_range=reduce_range,
                           observer="percentile", progress=False)
    fp32 = accuracy(trained_cnn, x_test, digits["y_test"])
    int8 = accuracy(qmodel, x_test, digits["y_test"])
    assert fp32 > 0.9
    assert fp32 - int8 <= 0.01, f"fp32 {fp32:.4f} vs int8 {int8:.4f}"

    summary = qmodel.mixq_summary
    assert {r.name for r in summary.quantized} == {"stem.0", "block.conv1", "block.conv2", "fc", "mixq_add_0"}
    assert any("stem.1" in n for n in summary.notes) and any("block.bn2" in n for n in summary.notes)

    path = mixq.export_onnx(qmodel, x_test[:2], tmp_path / "cnn.onnx")
    ops = mixq.optimized_op_types(path)
    assert ops["QLinearConv"] == 3 and ops["MatMulIntegerToFloat"] == 1
    assert not set(ops) & FLOAT_COMPUTE, ops
    assert sum(ops[k] for k in INTEGER_KERNELS) == 4
    # graph mode: the residual add (+ReLU) is integer, max pooling runs on uint8, one Q/DQ pair per tensor
    assert ops["QLinearAdd"] == 1 and ops["Add"] == 0 and ops["Relu"] == 0, ops
    # Q: network input, pooled features, logits; DQ: before average pooling, logits
    assert ops["QuantizeLinear"] == 3 and ops["DequantizeLinear"] == 2, ops

    (ort_out,) = ort_run(path, x_test)  # dynamic batch: exported with 2, run with all of them
    with torch.no_grad():
        ref = qmodel(x_test).numpy()
    assert ort_out.shape == ref.shape
    assert within_steps(ort_out, ref, qmodel.fc.y_scale) >= 0.999
    assert (ort_out.argmax(1) == ref.argmax(1)).mean() >= 0.999


def test_static_mlp_matches_ort_within_one_step(trained_mlp, digits, ort_run, within_steps, tmp_path, reduce_range):
    qmodel = mixq.quantize(trained_mlp, "static", calib_data=_calibration(digits["x_train"], (64,)), progress=False,
                           reduce_range=reduce_range)
    path = mixq.export_onnx(qmodel, digits["x_test"][:4], tmp_path / "mlp.onnx")
    ops = mixq.optimized_op_types(path)
    assert ops["MatMulIntegerToFloat"] == 3 and not set(ops) & FLOAT_COMPUTE, ops
    (ort_out,) = ort_run(path, digits["x_test"])
    with torch.no_grad():
        ref = qmodel(digits["x_test"]).numpy()
    assert within_steps(ort_out, ref, qmodel.head.y_scale) >= 0.999


def test_simulation_error_vs_float_is_bounded_by_steps(trained_mlp, digits):
    """The int8 model tracks the float model to within a few output steps on most elements."""
    qmodel = mixq.quantize(trained_mlp, "static", calib_data=_calibration(digits["x_train"], (64,)), progress=False)
    with torch.no_grad():
        diff = (qmodel(digits["x_test"]) - trained_mlp(digits["x_test"])).abs()
    step = float(qmodel.head.y_scale)
    assert float(np.median(diff.numpy())) <= 2 * step

"""ONNX Runtime's kernel timer: each int8 form is the integer kernel mixq's lowering gets from ORT, the timings are
real, and runtime-aware precision follows them (a small, fast measurement on this machine)."""

from __future__ import annotations

import platform
import time

import numpy as np
import pytest
import torch
from torch import nn

import mixq
from mixq.export.backend import get_runtime
from mixq.export.onnx import kernel_timing
from mixq.quant.runtime_costs import KernelCosts, kernel_of
from mixq.quant.runtime_precision import int8_slower

CONV = nn.Conv2d(8, 16, 3, padding=1)
CASES = {  # (layer, input shape, mode) -> the integer kernel ORT must run for the int8 form
    "static conv": (CONV, (1, 8, 8, 8), "static", "QLinearConv"),
    "static depthwise": (nn.Conv2d(8, 8, 3, padding=1, groups=8), (1, 8, 8, 8), "static", "QLinearConv"),
    "static linear": (nn.Linear(32, 16), (4, 32), "static", "MatMulIntegerToFloat"),
    "static linear, no bias": (nn.Linear(32, 16, bias=False), (4, 32), "static", "QLinearMatMul"),
    "dynamic conv": (CONV, (1, 8, 8, 8), "dynamic", "ConvInteger"),
    "dynamic linear": (nn.Linear(32, 16), (4, 32), "dynamic", "DynamicQuantizeMatMul"),
}


@pytest.mark.parametrize("float_input", [False, True], ids=["int8 producer", "float input"])
@pytest.mark.parametrize("layer, shape, mode, integer_op", list(CASES.values()), ids=list(CASES))
def test_the_int8_form_runs_the_integer_kernel_and_the_float_form_does_not(tmp_path, layer, shape, mode,
                                                                          integer_op, float_input):
    kernel = kernel_of(layer, shape, mode, float_input=float_input)
    assert kernel.float_input == (float_input and mode == "static")  # dynamic layers always read float
    rng = np.random.default_rng(0)
    for label, model in (("float", kernel_timing.float_model(kernel, rng)),
                         ("int8", kernel_timing.int8_model(kernel, rng))):
        path = tmp_path / f"{label}.onnx"
        path.write_bytes(model.SerializeToString())
        ops = mixq.optimized_op_types(path)
        assert (integer_op in ops) == (label == "int8"), (label, ops)


def test_a_real_measurement_is_fast_and_positive():
    start = time.perf_counter()
    cost = get_runtime("ort").time_kernel(kernel_of(CONV, (1, 8, 8, 8), "static"))
    assert time.perf_counter() - start < 5
    assert cost.float_ms > 0 and cost.int8_ms > 0


@pytest.mark.filterwarnings("ignore:nothing in Sequential could be quantized")
def test_quantize_keeps_float_exactly_the_layers_measured_slower(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.ReLU(),
                          nn.Conv2d(8, 16, 1)).eval()
    x = torch.randn(1, 3, 48, 48)
    qmodel = mixq.quantize(model, "dynamic", example_inputs=x, runtime="ort")
    runtime = get_runtime("ort")
    cached = KernelCosts.cached("ort", runtime.version())
    shapes = {"0": (1, 3, 48, 48), "2": (1, 8, 24, 24), "4": (1, 8, 24, 24)}
    for row in qmodel.mixq_summary.layers:
        cost = cached.get(kernel_of(model.get_submodule(row.name), shapes[row.name], "dynamic"))
        assert cost is not None, row.name  # measured and written to the cache
        assert (row.status == "float") == int8_slower(cost), (row, cost)


def _optimized_ops(model, tmp_path) -> list[str]:
    import onnx

    path = tmp_path / "optimized.onnx"
    kernel_timing._session(model, 1, optimized_path=path)
    return [node.op_type for node in onnx.load(str(path)).graph.node]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="ORT's channels-last int8 convs: x86")
@pytest.mark.parametrize("float_input", [False, True], ids=["int8 producer", "float input"])
def test_static_convs_are_timed_in_the_layout_their_int8_neighbours_run(tmp_path, float_input):
    """ORT runs a chain of int8 convs channels-last, so only a float layer among them pays Transposes: the int8 form
    is the channels-last QLinearConv alone (plus the model input's transpose), the float form pays both ways."""
    kernel = kernel_of(nn.Conv2d(8, 8, 3, padding=1, groups=8), (2, 8, 16, 16), "static", float_input=float_input)
    assert kernel_timing.channels_last(kernel)
    rng = np.random.default_rng(0)
    int8_ops = _optimized_ops(kernel_timing.int8_model(kernel, rng), tmp_path)
    float_ops = _optimized_ops(kernel_timing.float_model(kernel, rng), tmp_path)
    assert int8_ops.count("Transpose") == int(float_input) and "QLinearConv" in int8_ops, int8_ops
    assert float_ops.count("Transpose") == 2 - int(float_input) and "QLinearConv" not in float_ops, float_ops
    assert not kernel_timing.channels_last(kernel_of(nn.Linear(8, 8), (4, 8), "static"))
    assert not kernel_timing.channels_last(kernel_of(CONV, (1, 8, 8, 8), "dynamic"))

"""ONNX Runtime's kernel timer: each int8 form is the integer kernel mixq's lowering gets from ORT, the timings are
real, and runtime-aware precision follows them (a small, fast measurement on this machine)."""

from __future__ import annotations

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

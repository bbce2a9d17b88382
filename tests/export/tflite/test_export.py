"""LiteRT export with the real interpreter: the demo's CNN and a Conv1d+MLP net in full-integer, dynamic-range and
float16, against fp32 files and mixq's own simulation.

Each model is quantized and converted once per mode (module-scoped fixtures: conversions take seconds each).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("litert_torch", reason="the LiteRT extra is not installed: pip install 'mixq[litert]'")

import mixq  # noqa: E402
from mixq.demo import train  # noqa: E402
from mixq.demo.model import DigitsCNN  # noqa: E402
from mixq.export.tflite import COMPUTE_OPS  # noqa: E402


class ConvMLP(nn.Module):
    """Conv1d over the digits read as 4 channels x 16 steps, then a two-layer MLP head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(4, 32, 3, padding=1), nn.ReLU())
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(32 * 16, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.conv(x))


MODELS = {  # name -> (builder, input shape of one sample)
    "cnn": (lambda: DigitsCNN(channels=64), (1, 8, 8)),
    "conv_mlp": (ConvMLP, (4, 16)),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def case(request, digits, tmp_path_factory):
    """A trained float model, its three mixq quantizations, and the four LiteRT files made from them."""
    build, shape = MODELS[request.param]
    x_train = digits["x_train"].reshape(-1, *shape)
    x_test = digits["x_test"].reshape(-1, *shape)
    torch.manual_seed(0)
    model = train(build(), x_train, digits["y_train"], epochs=6)
    calib = [x_train[i:i + 64] for i in range(0, 512, 64)]
    models = {
        "fp32": model,
        "full_integer": mixq.quantize(model, "static", calib_data=calib, progress=False),
        "dynamic_range": mixq.quantize(model, "dynamic", example_inputs=x_train[:8]),
        "float16": mixq.quantize(model, "fp16", example_inputs=x_train[:8]),
    }
    folder = tmp_path_factory.mktemp(request.param)
    files = {mode: mixq.export_tflite(m, x_test[:1], folder / f"{mode}.tflite") for mode, m in models.items()}
    outputs = {mode: mixq.TFLiteRunner(path)(x_test) for mode, path in files.items()}
    with torch.no_grad():
        simulated = {mode: m(x_test).numpy() for mode, m in models.items()}
    return {"name": request.param, "models": models, "files": files, "outputs": outputs, "simulated": simulated,
            "x_test": x_test, "y_test": digits["y_test"].numpy()}


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(1) == labels))


def test_full_integer_accuracy_within_half_a_point_of_fp32(case):
    fp32 = _accuracy(case["outputs"]["fp32"], case["y_test"])
    int8 = _accuracy(case["outputs"]["full_integer"], case["y_test"])
    assert fp32 > 0.85, fp32  # a trained model, or the comparison means nothing
    assert int8 >= fp32 - 0.005, (int8, fp32)


def test_full_integer_matches_mixq_simulation(case):
    out, sim = case["outputs"]["full_integer"], case["simulated"]["full_integer"]
    head = [m for m in case["models"]["full_integer"].modules() if type(m).__name__ == "QuantizedLinear"][-1]
    step = float(head.y_scale)
    assert np.mean(out.argmax(1) == sim.argmax(1)) >= 0.995
    assert np.mean(np.abs(out - sim) <= step * (1 + 1e-5)) >= 0.999
    assert np.abs(out - sim).max() <= 2 * step * (1 + 1e-5)


def test_full_integer_compute_is_int8_on_xnnpack(case):
    info = mixq.inspect_tflite(case["files"]["full_integer"])
    compute = [op for op in info.ops if op.op_type in COMPUTE_OPS]
    n_layers = sum(type(m).__name__ in ("QuantizedConv", "QuantizedLinear")
                   for m in case["models"]["full_integer"].modules())
    assert len(compute) == n_layers, info
    for op in compute:
        assert op.input_types == ("int8", "int8", "int32"), op
        assert op.output_types == ("int8",), op
        assert op.xnnpack, op
    assert info.delegated_fraction == 1.0, info
    assert set(info.op_types) - {"QUANTIZE", "DEQUANTIZE"} <= COMPUTE_OPS | {
        "RESHAPE", "MAX_POOL_2D", "ADD", "MEAN", "TRANSPOSE"}, info.op_types
    assert "float32" not in {t for op in compute for t in op.input_types}


@pytest.mark.parametrize("mode, weight_type, limit", [("dynamic_range", "int8", 0.35), ("float16", "float16", 0.55)])
def test_dynamic_range_and_float16_files_run_and_shrink(case, mode, weight_type, limit):
    files = case["files"]
    ratio = files[mode].stat().st_size / files["fp32"].stat().st_size
    assert ratio <= limit, ratio
    info = mixq.inspect_tflite(files[mode])
    compute = [op for op in info.ops if op.op_type in COMPUTE_OPS]
    assert compute and all(op.input_types[0] == "float32" for op in compute), info
    if mode == "dynamic_range":  # depthwise convolutions stay float (no fast hybrid depthwise kernel)
        assert all(op.input_types[1] == ("float32" if op.op_type == "DEPTHWISE_CONV_2D" else "int8")
                   for op in compute), info
        assert all(op.xnnpack for op in info.ops), info
    else:
        assert sum(op.op_type == "DEQUANTIZE" and op.input_types == ("float16",) for op in info.ops) == len(compute)
    out, fp32 = case["outputs"][mode], case["outputs"]["fp32"]
    assert np.isfinite(out).all()
    assert np.mean(out.argmax(1) == fp32.argmax(1)) >= 0.98
    if mode == "float16":  # float16 weights, float32 compute: mixq's simulation to float32 rounding
        np.testing.assert_allclose(out, case["simulated"]["float16"], rtol=1e-4, atol=1e-4)


def test_fp32_file_matches_pytorch(case):
    np.testing.assert_allclose(case["outputs"]["fp32"], case["simulated"]["fp32"], rtol=1e-4, atol=1e-4)


def test_dynamic_range_file_stores_mixqs_int8_weights(case):
    """ai-edge-quantizer re-derives the weights from mixq's dequantized ones: they must come back bit for bit."""
    qmodel = case["models"]["dynamic_range"]
    expected = {}
    for m in qmodel.modules():
        if type(m).__name__ == "DynamicQuantizedLinear":
            expected[tuple(m.w_scale.tolist())] = m.weight_t.t().numpy()
        elif type(m).__name__ == "DynamicQuantizedConv" and m.qweight.shape[1] > 1:  # depthwise stays float
            expected[tuple(m.w_scale.tolist())] = m.qweight.numpy()
    found = _int8_weights(case["files"]["dynamic_range"])
    assert len(found) == len(expected)
    for scales, q in expected.items():
        match = [w for s, w in found if np.array_equal(s, np.float32(scales))]
        assert match, f"no int8 weight on mixq's scales {scales[:3]}..."
        assert np.array_equal(np.sort(match[0].ravel()), np.sort(q.ravel()))  # layouts differ (OIHW vs OHWI)


def _int8_weights(path) -> list[tuple[np.ndarray, np.ndarray]]:
    from mixq.export.tflite.interpreter import make_interpreter

    it = make_interpreter(path, xnnpack=False)
    out = []
    for d in it.get_tensor_details():
        scales = d["quantization_parameters"]["scales"]
        if d["dtype"] == np.int8 and len(d["shape"]) >= 2 and scales.size > 1:
            try:
                out.append((scales, it.get_tensor(d["index"])))
            except ValueError:  # an intermediate tensor, not a constant
                continue
    return out

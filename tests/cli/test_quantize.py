"""``mixq quantize`` end to end: per-layer summary on stdout, ONNX file plus JSON sidecar on disk."""

from __future__ import annotations

import json

import onnxruntime as ort


def test_static_writes_onnx_and_sidecar(quantized, user_dir):
    sidecar = json.loads((user_dir / "cnn_int8.mixq.json").read_text())
    assert sidecar["onnx_file"] == "cnn_int8.onnx" and sidecar["onnx_bytes"] == quantized.stat().st_size
    assert sidecar["config"]["mode"] == "static" and sidecar["config"]["observer"]["name"] == "percentile"
    layers = {r["name"]: r["status"] for r in sidecar["summary"]["layers"]}
    assert layers == {"conv": "quantized", "fc": "quantized"}
    session = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch, usable by mixq bench at any batch size
    assert not list(user_dir.glob("*.tmp"))


def test_dynamic_from_example_shape_prints_summary(mixq_main, user_dir):
    code, out, err = mixq_main("quantize", "--model", "nets.py:build", "--mode", "dynamic", "--example-shape",
                               "1,1,8,8", "--exclude", "conv", "--output", "cnn_dyn.onnx", cwd=user_dir)
    assert code == 0, err
    assert "mixq dynamic quantization: 1 layers quantized, 2 left float" in out
    assert "wrote cnn_dyn.onnx" in out and (user_dir / "cnn_dyn.mixq.json").exists()


def test_calibration_from_a_callable(mixq_main, user_dir):
    code, out, err = mixq_main("quantize", "--model", "nets:build", "--mode", "static", "--calib", "nets:calib",
                               "--runtime-aware", "off", "--output", "cnn_callable.onnx", cwd=user_dir)
    assert code == 0, err
    assert "2 layers quantized" in out


def test_smoothquant_flag(mixq_main, user_dir):
    code, out, err = mixq_main("quantize", "--model", "nets.py:build", "--mode", "static", "--calib", "nets:calib",
                               "--smoothquant", "1.5", "--output", "cnn_sq.onnx", cwd=user_dir)
    assert code == 2 and "alpha must be in [0, 1]" in err, err
    code, out, err = mixq_main("quantize", "--model", "nets.py:build", "--mode", "dynamic", "--example-shape",
                               "1,1,8,8", "--smoothquant", "auto", "--output", "cnn_sq.onnx", cwd=user_dir)
    assert code == 2 and "--smoothquant needs calibration data" in err, err
    code, out, err = mixq_main("quantize", "--model", "nets.py:build", "--mode", "static", "--calib", "nets:calib",
                               "--smoothquant", "auto", "--output", "cnn_sq.onnx", cwd=user_dir)
    assert code == 0 and (user_dir / "cnn_sq.onnx").exists(), err  # no foldable pair: warned, quantized as usual


def test_static_is_runtime_aware_for_the_output_formats_runtime_by_default(mixq_main, user_dir):
    code, out, err = mixq_main("quantize", "--model", "nets:build", "--mode", "static", "--calib", "nets:calib",
                               "--output", "cnn_aware.onnx", cwd=user_dir)
    assert code == 0, err
    config = json.loads((user_dir / "cnn_aware.mixq.json").read_text())["config"]
    assert config["runtime"] == "ort" and config["runtime_aware"] is True
    assert "runtime-aware precision for ONNX Runtime" in out


def test_runtime_options_are_checked_before_the_model_loads(mixq_main, user_dir):
    code, out, err = mixq_main("quantize", "--model", "nets:broken", "--mode", "static", "--calib", "nets:calib",
                               "--runtime", "litert", "--output", "x.onnx", cwd=user_dir)
    assert code == 2 and "--runtime litert does not run ONNX files" in err, err
    code, out, err = mixq_main("quantize", "--model", "nets:broken", "--mode", "fp16", "--runtime-aware", "off",
                               "--output", "x.onnx", cwd=user_dir)
    assert code == 2 and "runtime_aware=False has no effect without a runtime" in err, err


def test_weight_only_is_quantized_for_the_format_runtime_where_it_changes_the_layers():
    """LiteRT's integer-weight kernels round activations per row, so a .tflite weight-only model is quantized for
    it by default; ONNX Runtime's MatMulNBits keeps them float, so an .onnx one names no runtime."""
    import argparse

    from mixq.cli.quantize import _runtime
    from mixq.export.backend import get_format

    args = argparse.Namespace(runtime=None, mode="weight_only", runtime_aware="on")
    assert _runtime(args, get_format("tflite"))["runtime"] == "litert"
    assert _runtime(args, get_format("onnx"))["runtime"] is None
    assert _runtime(argparse.Namespace(runtime=None, mode="fp16", runtime_aware="on"), get_format("tflite"))[
        "runtime"] is None

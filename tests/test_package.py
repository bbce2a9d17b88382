"""The package surface: public names, and importing mixq stays cheap (no ONNX, no LiteRT, no CUDA)."""

from __future__ import annotations

import subprocess
import sys

import mixq


def test_public_api():
    for name in ("quantize", "export_onnx", "optimized_op_types", "QuantConfig", "QuantSpec", "MixedPrecision",
                 "export_tflite", "inspect_tflite", "TFLiteRunner", "LiteRTSession"):
        assert name in mixq.__all__ and getattr(mixq, name).__doc__


def test_import_does_not_load_onnx_litert_or_cuda():
    code = (
        "import sys, torch; import mixq; "
        "heavy = [m for m in ('onnx', 'onnxruntime', 'onnxscript', 'litert_torch', 'ai_edge_litert', "
        "'ai_edge_quantizer', 'jax', 'openvino', 'nncf') if m in sys.modules]; "
        "print(heavy, torch.cuda.is_initialized())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] False"

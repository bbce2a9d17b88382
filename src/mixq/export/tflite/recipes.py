"""Dynamic-range and float16 files: ai-edge-quantizer stores the weights of a float ``.tflite`` as int8 / float16.

The float file holds mixq's weights already on their grid (int8 values times mixq's per-channel scale, or float16
values upcast), and both recipes are lossless on such weights: the symmetric per-channel min-max scale of
``q * s`` with ``max |q| = 127`` is ``s`` again, and float16 -> float32 -> float16 is exact. So the file stores
mixq's int8 / float16 weights, not a second quantization of the float model.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

_DYNAMIC_RANGE = {  # int8 per-channel weights, activations quantized by the kernels at run time (TFLite "hybrid")
    "regex": "DynamicRangeWeights_", "operation": "*", "algorithm_key": "min_max_uniform_quantize",
    "op_config": {"weight_tensor_config": {"num_bits": 8, "symmetric": True, "granularity": "CHANNELWISE",
                                           "dtype": "INT"},
                  "compute_precision": "INTEGER", "explicit_dequantize": False, "skip_checks": False,
                  "min_weight_elements": 0},
}
_FLOAT16 = {  # float16 weights dequantized to float32 once at load time; compute stays float32
    "regex": "Float16Weights_", "operation": "*", "algorithm_key": "float_casting",
    "op_config": {"weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"}, "compute_precision": "FLOAT",
                  "explicit_dequantize": True, "skip_checks": False, "min_weight_elements": 0},
}
# Each recipe matches only the layers ``lowering`` marked (litert-torch names tensors after the module path, class
# names included), so layers a mixq config kept float32 stay float32.
RECIPES: dict[str, list[dict[str, Any]]] = {"dynamic_range": [_DYNAMIC_RANGE], "float16": [_FLOAT16]}


def apply_recipe(float_model: bytes, mode: str) -> bytes:
    """``float_model`` with its weights stored per ``mode`` (``"dynamic_range"`` or ``"float16"``)."""
    from ai_edge_quantizer import quantizer

    qt = quantizer.Quantizer(float_model)
    qt.load_quantization_recipe(RECIPES[mode])
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # it prints a size summary
        result = qt.quantize()
    return bytes(result.quantized_model)

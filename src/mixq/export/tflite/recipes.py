"""Dynamic-range and float16 files: ai-edge-quantizer stores the weights of a float ``.tflite`` as int8 / float16.

Depthwise convolutions (including a convolution over one input channel, which LiteRT runs as depthwise) stay
float32 in dynamic-range files, holding mixq's dequantized int8 weights: XNNPACK has no dynamic-range depthwise
kernel and LiteRT's builtin hybrid one ran ~50x slower than float on the demo CNN, while such layers hold few
weights.

The float file holds mixq's weights already on their grid (int8 values times mixq's per-channel scale, or float16
values upcast), and both recipes are lossless on such weights: the symmetric per-channel min-max scale of
``q * s`` with ``max |q| = 127`` is ``s`` again, and float16 -> float32 -> float16 is exact. So the file stores
mixq's int8 / float16 weights, not a second quantization of the float model.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any

_DYNAMIC_RANGE = {  # int8 per-channel weights, activations quantized by the kernels at run time (TFLite "hybrid")
    "regex": ".*", "operation": "*", "algorithm_key": "min_max_uniform_quantize",
    "op_config": {"weight_tensor_config": {"num_bits": 8, "symmetric": True, "granularity": "CHANNELWISE",
                                           "dtype": "INT"},
                  "compute_precision": "INTEGER", "explicit_dequantize": False, "skip_checks": False,
                  "min_weight_elements": 0},
}
_FLOAT16 = {  # float16 weights dequantized to float32 once at load time; compute stays float32
    "regex": ".*", "operation": "*", "algorithm_key": "float_casting",
    "op_config": {"weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"}, "compute_precision": "FLOAT",
                  "explicit_dequantize": True, "skip_checks": False, "min_weight_elements": 0},
}
RECIPES: dict[str, dict[str, Any]] = {"dynamic_range": _DYNAMIC_RANGE, "float16": _FLOAT16}
MARKERS = {"dynamic_range": "DynamicRangeWeights_", "float16": "Float16Weights_"}


def _tensor_name(tensor: Any) -> str:
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)


def marked_scopes(float_model: bytes, marker: str) -> list[tuple[str, int]]:
    """ai-edge-quantizer's scope (output tensor names) and the builtin op code of every op whose weight
    ``lowering`` marked.

    litert-torch names constant tensors after the module path, class names included, so the weights of mixq's
    dynamic-range / float16 layers carry the marker while layers a mixq config kept float32 do not.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(float_model))
    graph = model.subgraphs[0]

    def marked_weight(index: int) -> bool:  # a stored float32 tensor of rank >= 2 (not a bias, not a shape)
        tensor = graph.tensors[index]
        data = model.buffers[tensor.buffer].data if 0 < tensor.buffer < len(model.buffers) else None
        return (data is not None and len(data) > 0 and tensor.type == schema.TensorType.FLOAT32
                and len(tensor.shape) >= 2 and marker in _tensor_name(tensor))

    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    return [(tfl_flatbuffer_utils.get_op_scope(op, graph.tensors), codes[op.opcodeIndex]) for op in graph.operators
            if any(marked_weight(i) for i in op.inputs if i >= 0)]


def apply_recipe(float_model: bytes, mode: str, layers: int) -> bytes:
    """``float_model`` with the weights of its ``layers`` marked layers stored per ``mode`` (``"dynamic_range"``
    or ``"float16"``)."""
    from ai_edge_quantizer import quantizer

    scopes = marked_scopes(float_model, MARKERS[mode])
    if len(scopes) != layers:
        raise RuntimeError(f"found {len(scopes)} of the {layers} {mode} layers in the converted file (litert-torch "
                           "named their weights differently); nothing was written")
    if mode == "dynamic_range":  # XNNPACK has no dynamic-range depthwise kernel; LiteRT's own is ~50x slower
        from ai_edge_litert import schema_py_generated as schema

        scopes = [(scope, code) for scope, code in scopes if code != schema.BuiltinOperator.DEPTHWISE_CONV_2D]
    recipe = [dict(RECIPES[mode], regex="^" + re.escape(scope) + "$") for scope, _ in scopes]
    qt = quantizer.Quantizer(float_model)
    qt.load_quantization_recipe(recipe)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # it prints a size summary
        result = qt.quantize()
    return bytes(result.quantized_model)

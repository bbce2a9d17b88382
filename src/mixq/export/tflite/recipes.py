"""Dynamic-range and float16 files: ai-edge-quantizer stores the weights of a float ``.tflite`` as int8 / float16.

Depthwise convolutions (including a convolution over one input channel, which LiteRT runs as depthwise) stay
float32 in dynamic-range files, holding mixq's dequantized int8 weights: XNNPACK has no dynamic-range depthwise
kernel and LiteRT's builtin hybrid one ran ~50x slower than float on the demo CNN, while such layers hold few
weights.

The float file holds mixq's weights already on their grid (int8 values times mixq's per-channel scale, or float16
values upcast), and both recipes are lossless on such weights: the symmetric per-channel min-max scale of
``q * s`` with ``max |q| = 127`` is ``s`` again, and float16 -> float32 -> float16 is exact. So the file stores
mixq's int8 / float16 weights, not a second quantization of the float model.

Except where litert-torch folds a factor into a weight. A factor per output channel (the attention scale in an
SDPA's query and key) moves into the int8 scale, still lossless. A factor per input column (a LayerNorm's gamma,
folded into the query, key, value and intermediate Linears of a BERT) is not: the recipe then quantizes
``W diag(gamma)`` afresh per output channel, and float16 rounds the rescaled values again (2**-11 relative). The
file is then a close re-quantization, not mixq's exact weights; the export's self-check (``check``) bounds the
difference against mixq's simulation.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

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


def profile(values: np.ndarray) -> np.ndarray:
    """A weight's identity whatever the converter did to it: its sorted values over their largest magnitude.

    Sorting forgets the layout (a transpose, OHWI), the division a positive factor the converter folded in (it
    moves the attention scale ``1/sqrt(sqrt(d))`` into the query and key weights of an SDPA).
    """
    flat = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    peak = max(abs(flat[0]), abs(flat[-1])) if flat.size else 0.0
    return flat / peak if peak > 0 else flat


def _same(a: np.ndarray, b: np.ndarray) -> bool:  # equal up to float32 rounding of a rescale (2**-24 relative)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-5, atol=1e-6))


def _fits(stored: np.ndarray, w: np.ndarray) -> bool:
    """Whether ``stored == diag(a) @ w @ diag(b)`` for some row and column factors, to float32 rounding."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(w != 0, stored / np.where(w != 0, w, 1), np.nan)
        col = np.nan_to_num(np.nanmedian(ratio, axis=0))
        row = np.nan_to_num(np.nanmedian(ratio / np.where(col != 0, col, np.nan), axis=1))
    peak = float(np.abs(stored).max()) if stored.size else 0.0
    return bool(np.allclose(stored, row[:, None] * w * col[None, :], rtol=1e-4, atol=1e-6 * peak))


def rescaled(stored: np.ndarray, w: np.ndarray) -> bool:
    """Whether the 2-D ``stored`` is ``w`` (or its transpose) with its rows and columns rescaled: litert-torch folds
    a LayerNorm's gamma into the columns of the Linear after it, and an attention scale into its rows. Zeros stay
    zeros under such scales, so the zero pattern is checked first, then a block of rows, then the whole."""
    if stored.ndim != 2 or w.ndim != 2:
        return False
    for cand in (stored, stored.T):
        if cand.shape == w.shape and np.array_equal(cand == 0, w == 0) and _fits(cand[:16], w[:16]) \
                and _fits(cand, w):
            return True
    return False


def matched_scopes(float_model: bytes, weights: Sequence[np.ndarray]) -> tuple[list[tuple[str, int]], int]:
    """ai-edge-quantizer's scope (output tensor names) and builtin op code of every op that uses one of
    ``weights`` as a stored input, and how many of ``weights`` were found.

    Layers are matched by their weight values (``profile``, else ``rescaled``), not by tensor names:
    litert-torch names constants after module paths, or ``arith.constant12`` once it has folded them.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils

    from mixq.export.tflite.flatbuffer import read_flatbuffer

    wanted: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for k, w in enumerate(weights):
        wanted.setdefault(w.size, []).append((k, profile(w), np.asarray(w, dtype=np.float64)))
    model = read_flatbuffer(float_model)
    graph = model.subgraphs[0]
    seen: dict[int, set[int]] = {}

    def layers_of(index: int) -> set[int]:  # which weights a stored float32 tensor of rank >= 2 is
        if index not in seen:
            tensor = graph.tensors[index]
            data = model.buffers[tensor.buffer].data if 0 < tensor.buffer < len(model.buffers) else None
            seen[index] = set()
            if (data is not None and len(data) > 0 and tensor.type == schema.TensorType.FLOAT32
                    and len(tensor.shape) >= 2 and len(data) // 4 in wanted):
                values = np.frombuffer(bytes(data), dtype=np.float32)
                p = profile(values)
                seen[index] = {k for k, q, _ in wanted[p.size] if _same(p, q)}
                if not seen[index] and len(tensor.shape) == 2:
                    stored = values.astype(np.float64).reshape(tuple(tensor.shape))
                    seen[index] = {k for k, _, w in wanted[p.size] if rescaled(stored, w)}
        return seen[index]

    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    scopes, found = [], set()
    for op in graph.operators:
        layers = set().union(*(layers_of(i) for i in op.inputs if i >= 0))
        if layers:
            found |= layers
            scopes.append((tfl_flatbuffer_utils.get_op_scope(op, graph.tensors), codes[op.opcodeIndex]))
    return scopes, len(found)


def apply_recipe(float_model: bytes, mode: str, weights: Sequence[np.ndarray]) -> bytes:
    """``float_model`` with the ops using ``weights`` (the lowered layers' float weights) storing them per
    ``mode`` (``"dynamic_range"`` or ``"float16"``)."""
    from ai_edge_quantizer import quantizer

    scopes, found = matched_scopes(float_model, weights)
    layers = len(weights)
    if found != layers:
        raise RuntimeError(f"found the weights of {found} of the {layers} {mode} layers in the converted file "
                           "(litert-torch changed their values); nothing was written")
    if mode == "dynamic_range":  # XNNPACK has no dynamic-range depthwise kernel; LiteRT's own is ~50x slower
        from ai_edge_litert import schema_py_generated as schema

        scopes = [(scope, code) for scope, code in scopes if code != schema.BuiltinOperator.DEPTHWISE_CONV_2D]
    recipe = [dict(RECIPES[mode], regex="^" + re.escape(scope) + "$") for scope, _ in scopes]
    qt = quantizer.Quantizer(float_model)
    qt.load_quantization_recipe(recipe)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # it prints a size summary
        result = qt.quantize()
    return bytes(result.quantized_model)

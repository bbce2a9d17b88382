"""Integer inputs and outputs for full-integer files (what microcontroller and camera pipelines feed).

The converter, run without ``strict_qdq_mode``, folds the model's first quantize and last dequantize into int8
graph inputs and outputs. This module checks that it did so on mixq's grids, and for ``io_dtype="uint8"`` puts a
uint8 tensor in front of / behind each (same scale, zero point + 128: the same values) joined by a QUANTIZE op,
which LiteRT and XNNPACK run as an exact shift by 128 (what TFLite's own converter does for uint8 I/O).
"""

from __future__ import annotations

import copy

import numpy as np

from mixq.export.errors import ExportError
from mixq.export.tflite.lowering import ActivationQParams


def _check_grid(kind: str, k: int, tensor: object, q: ActivationQParams, schema: object) -> None:
    quant = tensor.quantization  # type: ignore[attr-defined]
    if tensor.type != schema.TensorType.INT8 or quant is None or len(quant.scale) != 1:  # type: ignore[attr-defined]
        raise ExportError(f"LiteRT kept {kind} {k} in float, so io_dtype must stay 'float32' for this model")
    if not np.isclose(quant.scale[0], q.scale, rtol=1e-6) or int(quant.zeroPoint[0]) != q.zero_point:
        raise ExportError(f"LiteRT put {kind} {k} on scale {quant.scale[0]:.6g} / zero point {quant.zeroPoint[0]}, "
                          f"not mixq's {q.scale:.6g} / {q.zero_point}; use io_dtype='float32'")


def _quantize_opcode(model: object, schema: object) -> int:
    code = schema.BuiltinOperator.QUANTIZE  # type: ignore[attr-defined]
    for i, opcode in enumerate(model.operatorCodes):  # type: ignore[attr-defined]
        if max(opcode.builtinCode, opcode.deprecatedBuiltinCode) == code:
            return i
    opcode = schema.OperatorCodeT()  # type: ignore[attr-defined]
    opcode.builtinCode, opcode.deprecatedBuiltinCode, opcode.version = code, code, 2
    model.operatorCodes.append(opcode)  # type: ignore[attr-defined]
    return len(model.operatorCodes) - 1  # type: ignore[attr-defined]


def _uint8_twin(subgraph: object, index: int, schema: object) -> int:
    """Append a uint8 copy of int8 tensor ``index`` (zero point + 128, no data) and return its index."""
    twin = copy.deepcopy(subgraph.tensors[index])  # type: ignore[attr-defined]
    twin.type, twin.buffer = schema.TensorType.UINT8, 0  # type: ignore[attr-defined]
    twin.name = (twin.name.decode() if isinstance(twin.name, bytes) else twin.name) + "_uint8"
    twin.quantization.zeroPoint = [int(z) + 128 for z in twin.quantization.zeroPoint]
    subgraph.tensors.append(twin)  # type: ignore[attr-defined]
    return len(subgraph.tensors) - 1  # type: ignore[attr-defined]


def _quantize_op(opcode: int, src: int, dst: int, schema: object) -> object:
    op = schema.OperatorT()  # type: ignore[attr-defined]
    op.opcodeIndex, op.inputs, op.outputs = opcode, [src], [dst]
    return op


def integer_io(content: bytes, in_q: list[ActivationQParams], out_q: list[ActivationQParams],
               io_dtype: str) -> bytes:
    """``content`` (converted with integer I/O) checked against mixq's grids, and turned to uint8 I/O if asked."""
    from ai_edge_litert import schema_py_generated as schema

    from mixq.export.tflite.flatbuffer import read_flatbuffer, write_flatbuffer

    model = read_flatbuffer(content)
    graph = model.subgraphs[0]
    for kind, indices, grids in (("input", graph.inputs, in_q), ("output", graph.outputs, out_q)):
        for k, (index, q) in enumerate(zip(indices, grids, strict=True)):
            _check_grid(kind, k, graph.tensors[index], q, schema)
    if io_dtype == "int8":
        return content
    opcode = _quantize_opcode(model, schema)
    renamed: dict[int, int] = {}
    head, tail = [], []
    for k, index in enumerate(graph.inputs):
        renamed[index] = twin = _uint8_twin(graph, index, schema)
        head.append(_quantize_op(opcode, twin, index, schema))
        graph.inputs[k] = twin
    for k, index in enumerate(graph.outputs):
        renamed[index] = twin = _uint8_twin(graph, index, schema)
        tail.append(_quantize_op(opcode, index, twin, schema))
        graph.outputs[k] = twin
    graph.operators = head + list(graph.operators) + tail
    for signature in model.signatureDefs or []:
        for entry in [*signature.inputs, *signature.outputs]:
            entry.tensorIndex = renamed.get(entry.tensorIndex, entry.tensorIndex)
    return write_flatbuffer(model)

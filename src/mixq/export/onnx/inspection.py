"""What an ONNX file holds and what ONNX Runtime runs of it (``mixq inspect``): which compute nodes are quantized
and how, the integer kernels and float compute left after ONNX Runtime's graph optimisation, and size by dtype."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixq.export.onnx.decoder import decoder_layout, describe_decoder
from mixq.export.onnx.ort_graph import FLOAT_COMPUTE, INTEGER_KERNELS, optimized_op_types

_COMPUTE = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Gather", "Attention", "LSTM", "GRU"}
_DTYPE_NAMES = {"float": "float32", "double": "float64"}
_PASS_THROUGH = {"DequantizeLinear", "Cast", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Identity"}


def _is_integer_kernel(op: str) -> bool:
    return op in INTEGER_KERNELS or op.startswith("QLinear")


def _tensors(graph: Any) -> dict[str, Any]:
    tensors = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensors[node.output[0]] = node.attribute[0].t
    return tensors


def quantized_nodes(graph: Any) -> list[dict[str, str]]:
    """Each compute node: its op, the weight it reads, and whether it is quantized (and how)."""
    from onnx import TensorProto

    tensors, producers = _tensors(graph), {out: n for n in graph.node for out in n.output}

    def source(name: str, via_dq: bool = False, depth: int = 0) -> tuple[Any, bool] | None:
        if name in tensors:
            return tensors[name], via_dq
        node = producers.get(name)
        if node is None or node.op_type not in _PASS_THROUGH or depth > 4 or not node.input:
            return None
        return source(node.input[0], via_dq or node.op_type == "DequantizeLinear", depth + 1)

    rows = []
    for node in graph.node:
        if node.op_type not in _COMPUTE and not _is_integer_kernel(node.op_type):
            continue
        found = [s for s in (source(i) for i in node.input if i) if s is not None]
        weights = [t for t, _ in found if t.dims and len(t.dims) >= 1 and not t.name.endswith(("_scale", "_zp"))]
        weight = max(weights, key=lambda t: len(t.dims), default=None)
        dtype = TensorProto.DataType.Name(weight.data_type).lower() if weight is not None else ""
        via_dq = any(dq for _, dq in found) or any(
            producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in node.input)
        if _is_integer_kernel(node.op_type):
            status = "integer kernel"
        elif via_dq:
            status = f"QDQ ({dtype} weights)" if dtype else "QDQ"
        elif dtype in ("int8", "uint8", "int4", "uint4"):
            status = f"{dtype} table"
        elif dtype == "float16":
            status = "float16 weights"
        else:
            status = "float"
        rows.append({"node": node.name, "op": node.op_type, "weight": weight.name if weight is not None else "",
                     "weight_dtype": dtype, "status": status, "quantized": status != "float"})
    return rows


def size_by_dtype(graph: Any) -> dict[str, dict[str, int]]:
    """Bytes and tensor count of the stored tensors (initializers and constants), per data type."""
    import numpy as np
    from onnx import TensorProto, helper

    sizes: dict[str, dict[str, int]] = {}
    for tensor in _tensors(graph).values():
        name = TensorProto.DataType.Name(tensor.data_type).lower()
        name = _DTYPE_NAMES.get(name, name)
        numel = int(np.prod(tensor.dims)) if tensor.dims else 1
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        bits = 4 if name in ("int4", "uint4") else 8 * itemsize
        entry = sizes.setdefault(name, {"tensors": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["bytes"] += (numel * bits + 7) // 8
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1]["bytes"]))


def inspect_model(path: str | os.PathLike) -> dict[str, Any]:
    """Everything ``mixq inspect`` shows of an ONNX file, as a dict."""
    import onnx

    model = onnx.load(str(path))
    ops = optimized_op_types(path)
    nodes = quantized_nodes(model.graph)
    return {
        "model": str(path), "size_bytes": Path(path).stat().st_size,
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "exported_ops": dict(Counter(n.op_type for n in model.graph.node).most_common()),
        "nodes": nodes, "quantized_nodes": sum(n["quantized"] for n in nodes),
        "ort_ops": dict(ops.most_common()),
        "ort_integer_kernels": {k: v for k, v in ops.most_common() if _is_integer_kernel(k)},
        "ort_float_compute": {k: v for k, v in ops.most_common() if k in FLOAT_COMPUTE},
        "size_by_dtype": size_by_dtype(model.graph),
        "decoder": decoder_layout(model.graph),
    }


def format_op_counts(ops: dict[str, int]) -> str:
    """``{"QLinearConv": 3, "Relu": 1}`` as ``"QLinearConv x3, Relu"`` (``"none"`` when empty)."""
    return ", ".join(f"{k} x{v}" if v > 1 else k for k, v in ops.items()) or "none"


def render(info: dict[str, Any]) -> str:
    """The terminal view of :func:`inspect_model`'s dict."""
    nodes = info["nodes"]
    lines = [f"{info['model']}: {info['size_bytes'] / 1024:.1f} KB, opsets {info['opsets']}", "",
             *([describe_decoder(info["decoder"]), ""] if info.get("decoder") else []),
             f"compute nodes in the exported graph: {info['quantized_nodes']} of {len(nodes)} "
             "with quantized or float16 weights"]
    width = max([len(n["node"]) for n in nodes] + [4])
    op_w = max([len(n["op"]) for n in nodes] + [2])
    weight_w = max([len(n["weight"]) for n in nodes] + [6])
    lines.append(f"  {'node':<{width}}  {'op':<{op_w}}  {'weight':<{weight_w}}  status")
    lines += [f"  {n['node']:<{width}}  {n['op']:<{op_w}}  {n['weight']:<{weight_w}}  {n['status']}" for n in nodes]
    lines += ["", "after ONNX Runtime's graph optimisation (CPU, extended level):",
              f"  integer kernels: {format_op_counts(info['ort_integer_kernels'])}",
              f"  float compute:   {format_op_counts(info['ort_float_compute'])}",
              f"  all ops:         {format_op_counts(info['ort_ops'])}", "", "stored tensors by dtype:"]
    total = sum(v["bytes"] for v in info["size_by_dtype"].values()) or 1
    for dtype, v in info["size_by_dtype"].items():
        lines.append(f"  {dtype:<9} {v['bytes'] / 1024:9.1f} KB  {v['bytes'] / total:6.1%}  ({v['tensors']} tensors)")
    return "\n".join(lines)


@dataclass(frozen=True)
class OnnxModelInfo:
    """:func:`inspect_model`'s dict; ``str()`` is the terminal report."""

    info: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.info

    def __str__(self) -> str:
        return render(self.info)


def inspect_onnx(path: str | os.PathLike) -> OnnxModelInfo:
    """What ``mixq inspect`` shows of an ONNX file. Example: ``print(inspect_onnx("model_int8.onnx"))``."""
    return OnnxModelInfo(inspect_model(path))

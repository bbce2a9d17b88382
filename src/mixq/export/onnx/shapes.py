"""The names an ONNX file gives its symbolic input axes (``batch``, ``sequence``), and what a file accepts.

Which axes are symbolic is decided in the core (``mixq.quant.dynamic_shapes``), where graph capture needs it too.
"""

from __future__ import annotations

from typing import Any


def name_symbolic_dims(model: Any, positional: list[dict[int, str]], keyword: dict[str, dict[int, str]]) -> None:
    """Rename the exporter's symbols (``s0``, ``s43``...) to ``batch`` / ``sequence`` throughout the graph."""
    wanted = list(keyword.values()) if keyword and not positional else positional + list(keyword.values())
    graph = model.graph
    renames: dict[str, str] = {}
    for value, axes in zip(graph.input, wanted, strict=False):
        dims = value.type.tensor_type.shape.dim
        for axis, label in axes.items():
            if axis < len(dims) and dims[axis].dim_param:
                renames.setdefault(dims[axis].dim_param, label)
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]


def symbolic_axes(model: Any) -> dict[str, list[str | int]]:
    """Each graph input's shape, symbolic dimensions by name (what ``export_onnx`` reports)."""
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input}

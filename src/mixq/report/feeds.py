"""Inputs for timing ONNX files side by side: one set of shapes every file is fed, and values each input accepts.

Shapes come from the caller (``--shape NAME=1x128`` or the arrays of an ``.npz``), a batch size, the files' fixed
dimensions, and symbolic dimensions shared by name (``input_ids`` and ``attention_mask`` both ``[batch,
sequence]``). Values: floats are standard normal; masks are ones; token type ids zeros; position ids ``0..n-1``;
other integer inputs are token ids below the smallest table they index (found in the graph), else zeros.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["GraphInput", "cast_feeds", "graph_inputs", "index_limits", "plan_shapes", "synthesize", "unfit_shape"]

NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
_INDEX_PASS_THROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"}
_TABLE_PASS_THROUGH = {"DequantizeLinear", "Cast", "Identity"}


@dataclasses.dataclass(frozen=True)
class GraphInput:
    """One input of an ONNX graph: its name, NumPy dtype and dimensions (an int, a symbolic name, or None)."""

    name: str
    dtype: type
    dims: tuple[int | str | None, ...]


def graph_inputs(session: Any) -> list[GraphInput]:
    """The inputs of an ONNX Runtime session; ``ValueError`` for a type this module cannot synthesise."""
    inputs = []
    for value in session.get_inputs():
        dtype = NUMPY_TYPES.get(value.type)
        if dtype is None:
            raise ValueError(f"input {value.name!r} has type {value.type}, which mixq bench cannot generate")
        dims = tuple(d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) and d else None)
                     for d in value.shape)
        inputs.append(GraphInput(value.name, dtype, dims))
    return inputs


def _check_same_inputs(files: Mapping[str, Sequence[GraphInput]]) -> None:
    (first, reference), *others = files.items()
    ref = {i.name: len(i.dims) for i in reference}
    for name, inputs in others:
        own = {i.name: len(i.dims) for i in inputs}
        if set(own) != set(ref):
            raise ValueError(f"{first} takes inputs {sorted(ref)} but {name} takes {sorted(own)}; mixq bench "
                             "compares files that take the same inputs")
        ranks = [f"{k!r} has rank {ref[k]} in {first} and {own[k]} in {name}" for k in ref if ref[k] != own[k]]
        if ranks:
            raise ValueError(f"input {ranks[0]}; mixq bench compares files whose inputs have the same ranks")


def plan_shapes(files: Mapping[str, Sequence[GraphInput]], given: Mapping[str, Sequence[int]] | None = None,
                batch: int | None = None) -> dict[str, tuple[int, ...]]:
    """One shape per input name, fed to every file in ``files`` (file name -> its inputs).

    ``given`` shapes are used as they are; then axis 0 is ``batch``; an axis sharing a symbolic name (e.g.
    ``sequence``) with a sized one in the same file takes its size; the rest take a file's fixed size. Raises
    ``ValueError`` when the files take different input names or ranks, a given shape does not fit, or a symbolic
    axis is left unknown.
    """
    _check_same_inputs(files)
    reference = {i.name: i for i in next(iter(files.values()))}
    shapes: dict[str, list[int | None]] = {name: [None] * len(i.dims) for name, i in reference.items()}
    for name, dims in (given or {}).items():
        if name not in reference:
            raise ValueError(f"--shape names {name!r}, which is not an input; the inputs are {sorted(reference)}")
        if len(dims) != len(reference[name].dims):
            raise ValueError(f"--shape {name}={'x'.join(map(str, dims))} has rank {len(dims)}, but {name!r} has "
                             f"rank {len(reference[name].dims)} (dimensions {list(reference[name].dims)})")
        shapes[name] = list(dims)
    if batch is not None:
        for name, dims in shapes.items():
            if dims and name not in (given or {}):
                dims[0] = batch
    _bind_symbolic(files, shapes)  # what the caller set first, then the sizes the files fix
    for inputs in files.values():
        for i in inputs:
            for axis, dim in enumerate(i.dims):
                if isinstance(dim, int) and shapes[i.name][axis] is None:
                    shapes[i.name][axis] = dim
    _bind_symbolic(files, shapes)
    for i in reference.values():
        unknown = [axis for axis, size in enumerate(shapes[i.name]) if size is None]
        if unknown:
            label = f" ({i.dims[unknown[0]]!r})" if isinstance(i.dims[unknown[0]], str) else ""
            example = "x".join(str(s or 128) for s in shapes[i.name])
            raise ValueError(f"axis {unknown[0]} of input {i.name!r} is symbolic{label} and nothing sets its size; "
                             f"give it with --shape {i.name}={example} (or --inputs FILE.npz)")
    return {name: tuple(dims) for name, dims in shapes.items()}  # type: ignore[misc]


def _bind_symbolic(files: Mapping[str, Sequence[GraphInput]], shapes: dict[str, list[int | None]]) -> None:
    """Fill unknown axes from known axes that share their symbolic name in the same file, until nothing changes."""
    changed = True
    while changed:
        changed = False
        for inputs in files.values():
            bound = {dim: shapes[i.name][axis] for i in inputs for axis, dim in enumerate(i.dims)
                     if isinstance(dim, str) and shapes[i.name][axis] is not None}
            for i in inputs:
                for axis, dim in enumerate(i.dims):
                    if shapes[i.name][axis] is None and isinstance(dim, str) and dim in bound:
                        shapes[i.name][axis] = bound[dim]
                        changed = True


def unfit_shape(inputs: Sequence[GraphInput], shapes: Mapping[str, Sequence[int]]) -> str | None:
    """Why a file cannot take ``shapes`` (a fixed dimension of another size), or None."""
    for i in inputs:
        for axis, (dim, size) in enumerate(zip(i.dims, shapes[i.name], strict=True)):
            if isinstance(dim, int) and dim != size:
                if axis == 0:
                    return (f"input {i.name!r} has a fixed batch size of {dim}, not {size}; export with a dynamic "
                            "batch dimension (mixq.export_onnx does by default)")
                return f"input {i.name!r} has axis {axis} fixed at {dim}, not {size}"
    return None


def index_limits(path: str | os.PathLike, input_names: Sequence[str]) -> dict[str, int | None]:
    """Per input name: the number of rows of the smallest table it indexes with ``Gather`` (the vocabulary size
    for token ids), or None when it indexes none this can see."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    sizes = {t.name: list(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            sizes[node.output[0]] = list(node.attribute[0].t.dims)
    producers = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def table_rows(name: str, axis: int, depth: int = 0) -> int | None:
        if name in sizes:
            dims = sizes[name]
            return dims[axis] if -len(dims) <= axis < len(dims) else None
        node = producers.get(name)
        if node is None or node.op_type not in _TABLE_PASS_THROUGH or depth > 4:
            return None
        return table_rows(node.input[0], axis, depth + 1)

    def limit(input_name: str) -> int | None:
        limits, frontier, seen = [], [input_name], set()
        while frontier:
            name = frontier.pop()
            if name in seen:
                continue
            seen.add(name)
            for node in consumers.get(name, []):
                if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name:
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    rows = table_rows(node.input[0], axis)
                    if rows:
                        limits.append(rows)
                elif node.op_type in _INDEX_PASS_THROUGH:
                    frontier.extend(node.output)
        return min(limits) if limits else None

    return {name: limit(name) for name in input_names}


def synthesize(inputs: Sequence[GraphInput], shapes: Mapping[str, Sequence[int]],
               limits: Mapping[str, int | None] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Values for ``inputs`` at ``shapes`` that each input accepts (see the module docstring); ``limits`` bound
    integer ids per input name (:func:`index_limits`)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in inputs:
        shape, lowered = tuple(shapes[i.name]), i.name.lower()
        if np.issubdtype(i.dtype, np.floating):
            feeds[i.name] = rng.standard_normal(shape).astype(i.dtype)
        elif i.dtype is np.bool_ or "mask" in lowered:
            feeds[i.name] = np.ones(shape, dtype=i.dtype)
        elif "position" in lowered and shape:
            feeds[i.name] = np.broadcast_to(np.arange(shape[-1], dtype=i.dtype), shape).copy()
        elif (limit := (limits or {}).get(i.name)) and "type" not in lowered:
            feeds[i.name] = rng.integers(0, limit, size=shape, dtype=i.dtype)
        else:
            feeds[i.name] = np.zeros(shape, dtype=i.dtype)
    return feeds


def cast_feeds(feeds: Mapping[str, np.ndarray], inputs: Sequence[GraphInput]) -> dict[str, np.ndarray]:
    """``feeds`` in each input's dtype (one file may take float16 where another takes float32)."""
    return {i.name: np.asarray(feeds[i.name]).astype(i.dtype, copy=False) for i in inputs}

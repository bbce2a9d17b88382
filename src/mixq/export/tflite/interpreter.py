"""What LiteRT runs: a ``.tflite`` file's operators, their types, which ones XNNPACK executes, and running it.

XNNPACK (LiteRT's default CPU delegate) replaces the operators it takes with DELEGATE nodes; an operator is
delegated when it lies inside one of those partitions, i.e. between a DELEGATE node's inputs and its outputs.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixq.export.tflite.converter import require_litert

COMPUTE_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV"})


@dataclass(frozen=True)
class TFLiteOp:
    """One operator of the main graph: its type, the element types of its (non-empty) inputs, and delegation."""

    index: int
    op_type: str
    input_types: tuple[str, ...]
    output_types: tuple[str, ...]
    xnnpack: bool


@dataclass(frozen=True)
class TFLiteModelInfo:
    """A ``.tflite`` file as LiteRT loads it: size, I/O, operators. ``str()`` is a readable report."""

    path: Path
    size_bytes: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    ops: tuple[TFLiteOp, ...]
    size_by_dtype: dict[str, dict[str, int]]

    @property
    def op_types(self) -> Counter[str]:
        return Counter(op.op_type for op in self.ops)

    @property
    def delegated_fraction(self) -> float:
        return sum(op.xnnpack for op in self.ops) / max(1, len(self.ops))

    def to_dict(self) -> dict[str, Any]:
        return {"model": str(self.path), "size_bytes": self.size_bytes, "inputs": list(self.inputs),
                "outputs": list(self.outputs), "op_types": dict(self.op_types.most_common()),
                "xnnpack_ops": sum(op.xnnpack for op in self.ops), "ops": [asdict(op) for op in self.ops],
                "size_by_dtype": self.size_by_dtype}

    def __str__(self) -> str:
        lines = [f"{self.path.name}: LiteRT flatbuffer, {self.size_bytes / 1e6:.3f} MB, {len(self.ops)} ops, "
                 f"{sum(op.xnnpack for op in self.ops)} on XNNPACK",
                 f"  inputs:  {', '.join(self.inputs)}", f"  outputs: {', '.join(self.outputs)}"]
        for (op_type, types, xnn), n in Counter(
                (op.op_type, op.input_types, op.xnnpack) for op in self.ops).most_common():
            where = "XNNPACK" if xnn else "LiteRT builtin"
            lines.append(f"  {n:4d} x {op_type:<20} in: {', '.join(types):<28} {where}")
        total = sum(v["bytes"] for v in self.size_by_dtype.values()) or 1
        lines.append("  stored tensors by dtype:")
        for dtype, v in self.size_by_dtype.items():
            lines.append(f"    {dtype:<9} {v['bytes'] / 1024:9.1f} KB  {v['bytes'] / total:6.1%}  "
                         f"({v['tensors']} tensors)")
        return "\n".join(lines)


def make_interpreter(path: str | os.PathLike | None = None, content: bytes | None = None,
                     threads: int = 2, xnnpack: bool = True) -> Any:
    """An allocated ``ai_edge_litert`` Interpreter for a file or in-memory model (XNNPACK unless asked not to)."""
    require_litert()
    from ai_edge_litert import interpreter as litert

    kwargs: dict[str, Any] = {"num_threads": threads}
    if not xnnpack:
        kwargs["experimental_op_resolver_type"] = litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if content is not None:
        it = litert.Interpreter(model_content=content, **kwargs)
    else:
        it = litert.Interpreter(model_path=str(path), **kwargs)
    it.allocate_tensors()
    return it


def _tensor_type(details: list[dict], index: int) -> str:
    return np.dtype(details[index]["dtype"]).name


def _describe_tensor(d: dict) -> str:
    scale, zp = d["quantization"]
    q = f" (scale {scale:.4g}, zero point {zp})" if scale else ""
    shape = "x".join(str(s) if s >= 0 else "?" for s in d["shape_signature"])
    return f"{d['name']} {np.dtype(d['dtype']).name}[{shape}]{q}"


def inspect_tflite(path: str | os.PathLike, threads: int = 2) -> TFLiteModelInfo:
    """Operators of ``path`` with their input types and whether XNNPACK executes them.

    Example: ``info = mixq.inspect_tflite("model.tflite"); print(info.op_types, info.delegated_fraction)``.
    """
    it = make_interpreter(path, threads=threads)
    details = it.get_tensor_details()
    every = it._get_ops_details()  # the file's operators, then the DELEGATE nodes XNNPACK added
    ops = [op for op in every if op["op_name"] != "DELEGATE"]
    producer = {t: op["index"] for op in ops for t in op["outputs"]}
    delegated: set[int] = set()
    for node in every:
        if node["op_name"] != "DELEGATE":
            continue
        boundary, stack = set(node["inputs"]), list(node["outputs"])
        while stack:
            tensor = stack.pop()
            op = producer.get(tensor)
            if tensor in boundary or op is None or op in delegated:
                continue
            delegated.add(op)
            stack.extend(t for t in every[op]["inputs"] if t >= 0)
    result = tuple(
        TFLiteOp(op["index"], op["op_name"], tuple(_tensor_type(details, t) for t in op["inputs"] if t >= 0),
                 tuple(_tensor_type(details, t) for t in op["outputs"]), op["index"] in delegated)
        for op in ops)
    return TFLiteModelInfo(Path(path), Path(path).stat().st_size,
                           tuple(_describe_tensor(d) for d in it.get_input_details()),
                           tuple(_describe_tensor(d) for d in it.get_output_details()), result, _size_by_dtype(path))


def _size_by_dtype(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Bytes and count of the constant tensors stored in the file, per element type, largest first."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    sizes: dict[str, dict[str, int]] = {}
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            buffer = model.buffers[tensor.buffer] if 0 < tensor.buffer < len(model.buffers) else None
            if buffer is None or buffer.data is None or len(buffer.data) == 0:
                continue
            entry = sizes.setdefault(names.get(tensor.type, str(tensor.type)), {"tensors": 0, "bytes": 0})
            entry["tensors"] += 1
            entry["bytes"] += len(buffer.data)
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1]["bytes"]))


class TFLiteRunner:
    """Run a ``.tflite`` file on float32 numpy/torch inputs, whatever its I/O types.

    Integer inputs are quantized with the file's own input scale and zero point (round half to even, saturate)
    and integer outputs dequantized, so every file answers in float32. ``layout="nhwc"`` files take NCHW tensors
    here too when ``transpose=True``. Batches larger than the file's fixed batch run one row at a time.

    Example: ``TFLiteRunner("model.tflite")(x)`` returns a float32 numpy array.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, content: bytes | None = None,
                 threads: int = 2, xnnpack: bool = True) -> None:
        self.interpreter = make_interpreter(path, content, threads=threads, xnnpack=xnnpack)
        self.input_details = self.interpreter.get_input_details()
        self.output_details = self.interpreter.get_output_details()

    def _resize(self, arrays: list[np.ndarray]) -> bool:
        """Resize to the inputs' batch when the file allows it; False when the batch is fixed."""
        resized = False
        current = self.interpreter.get_input_details()  # the shapes of the last resize, not of the file
        for d, now, a in zip(self.input_details, current, arrays, strict=True):
            if tuple(now["shape"]) == a.shape:
                continue
            if d["shape_signature"][0] != -1 or tuple(d["shape"][1:]) != a.shape[1:]:
                return False
            self.interpreter.resize_tensor_input(d["index"], list(a.shape))
            resized = True
        if resized:
            self.interpreter.allocate_tensors()
        return True

    def _prepare(self, a: np.ndarray, d: dict) -> np.ndarray:
        dtype, (scale, zp) = np.dtype(d["dtype"]), d["quantization"]
        if dtype.kind in "iu" and scale and a.dtype.kind == "f":  # a float on the input's integer grid
            info = np.iinfo(dtype)
            return np.clip(np.rint(a / np.float32(scale)) + zp, info.min, info.max).astype(dtype)
        return a.astype(dtype, copy=False)

    def invoke(self, *inputs: Any) -> list[np.ndarray]:
        """Raw outputs (the file's own dtypes) for one batch the file's shapes accept."""
        for d, a in zip(self.input_details, inputs, strict=True):
            self.interpreter.set_tensor(d["index"], self._prepare(np.asarray(a), d))
        self.interpreter.invoke()
        return [np.array(self.interpreter.get_tensor(d["index"])) for d in self.output_details]

    def _to_float(self, out: np.ndarray, d: dict) -> np.ndarray:
        if np.dtype(d["dtype"]).kind in "iu":
            scale, zp = d["quantization"]
            return (out.astype(np.float32) - zp) * np.float32(scale)
        return out.astype(np.float32)

    def __call__(self, *inputs: Any) -> np.ndarray | list[np.ndarray]:
        arrays = [np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float32) for a in inputs]
        if self._resize(arrays):
            rows = [self.invoke(*arrays)]
        else:
            rows = [self.invoke(*(a[i:i + 1] for a in arrays)) for i in range(arrays[0].shape[0])]
        outs = [np.concatenate([self._to_float(r[k], d) for r in rows]) for k, d in enumerate(self.output_details)]
        return outs[0] if len(outs) == 1 else outs


def _dims(shape: Any) -> str:
    return "x".join(str(s) if s >= 0 else "?" for s in shape)


class LiteRTSession:
    """A ``.tflite`` file behind the small interface ``mixq bench`` times: ``random_feeds(batch)`` or
    ``given_feeds(arrays)``, then ``run(None, feeds)`` (as an ONNX Runtime session's ``run``), on ``threads`` CPU
    threads with XNNPACK."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.runner = TFLiteRunner(path, threads=threads or 2)

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each input's name and its current shape (after the last resize)."""
        return {d["name"]: tuple(int(s) for s in d["shape"])
                for d in self.runner.interpreter.get_input_details()}

    def _allocate(self, arrays: list[np.ndarray]) -> None:
        """Resize the inputs to ``arrays``' shapes, or say which input cannot take its shape."""
        for d, a in zip(self.runner.input_details, arrays, strict=True):
            signature = d["shape_signature"]
            if len(signature) == a.ndim and all(s in (-1, n) for s, n in zip(signature, a.shape, strict=True)):
                continue
            if len(signature) == a.ndim and tuple(signature[1:]) == a.shape[1:]:
                raise ValueError(f"input {d['name']!r} has a fixed batch size of {signature[0]}, not {a.shape[0]}; "
                                 "export with mixq.export_tflite(..., dynamic_batch=True) to resize it")
            raise ValueError(f"input {d['name']!r} takes {_dims(signature)}, not {_dims(a.shape)}")
        self.runner._resize(arrays)

    def random_feeds(self, batch: int, seed: int = 0) -> dict[int, np.ndarray]:
        """Normal floats (integer inputs: uniform over their range) at batch size ``batch``."""
        rng = np.random.default_rng(seed)
        feeds = {}
        for d in self.runner.input_details:
            shape = [int(s) for s in d["shape"]]
            if shape:
                shape[0] = batch
            dtype = np.dtype(d["dtype"])
            if dtype.kind in "iu":
                info = np.iinfo(dtype)
                feeds[d["index"]] = rng.integers(info.min, info.max + 1, size=shape).astype(dtype)
            else:
                feeds[d["index"]] = rng.standard_normal(shape).astype(dtype)
        self._allocate(list(feeds.values()))
        return feeds

    def given_feeds(self, arrays: list[np.ndarray]) -> dict[int, np.ndarray]:
        """``arrays`` (one per input, in the file's input order) as the file takes them: quantized with its own
        scale and zero point for integer inputs on a grid, cast otherwise. ``ValueError`` when one does not fit."""
        details = self.runner.input_details
        if len(arrays) != len(details):
            raise ValueError(f"the file takes {len(details)} input(s), not {len(arrays)}")
        arrays = [np.asarray(a) for a in arrays]
        self._allocate(arrays)
        return {d["index"]: self.runner._prepare(a, d) for d, a in zip(details, arrays, strict=True)}

    def run(self, _outputs: None, feeds: dict[int, np.ndarray]) -> None:
        it = self.runner.interpreter
        for index, value in feeds.items():
            it.set_tensor(index, value)
        it.invoke()

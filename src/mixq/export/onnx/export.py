"""``mixq.export_onnx``: write a (quantized) model to an ONNX file that ONNX Runtime runs with integer kernels."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq.export.backend import file_runtime
from mixq.export.errors import ExportError
from mixq.export.inputs import example_args, io_dtype_name
from mixq.export.onnx import shapes
from mixq.export.onnx.validation import check_model_runs, check_runtime_runs
from mixq.quant import dynamic_shapes as axes
from mixq.quant.calibration import describe
from mixq.quant.finiteness import check_finite
from mixq.quant.modules.observed import refuse_observed
from mixq.quant.modules.rows import float_output_linears
from mixq.report.files import atomic_path, check_writable

MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear
IO_DTYPES = ("float32", "float16")  # export_onnx's io_dtype names (mixq.export.inputs)
log = logging.getLogger(__name__)


@contextlib.contextmanager
def _without_cache(model: nn.Module, kwargs: dict) -> Iterator[None]:
    """Hugging Face models that return a KV cache by default (``config.use_cache``) export their outputs without
    it, unless the caller passed ``use_cache`` (the cache object is not a tensor ONNX can return). The config is
    switched off for the export and restored after it, so the call (positional or keyword) is left as it is."""
    config = getattr(model, "config", None)
    if not getattr(config, "use_cache", False) or "use_cache" in kwargs:
        yield
        return
    config.use_cache = False
    try:
        yield
    finally:
        config.use_cache = True


def output_names_of(output: Any) -> list[str] | None:
    """The names of a model output's tensors in the order the exporter flattens them: a mapping's keys (Hugging
    Face ``ModelOutput``: ``logits``, ``last_hidden_state``...), ``key.i`` for tuples inside it (``hidden_states.0``);
    None for a bare tensor or tuple (the exporter's names are kept)."""
    if not isinstance(output, dict):
        return None
    names: list[str] = []
    for key, value in output.items():
        if isinstance(value, torch.Tensor):
            names.append(str(key))
        elif isinstance(value, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in value):
            names += [f"{key}.{i}" for i in range(len(value))]
        else:
            return None  # a cache object or nested structure: leave naming to the exporter
    return names or None


def _shape_plan(model: nn.Module, dynamic_shapes: Any, args: tuple, kwargs: dict) -> tuple[Any, tuple, dict, Any]:
    """``(torch.export spec, export args, export kwargs, axes to name)`` for ``export_onnx``'s ``dynamic_shapes``."""
    if dynamic_shapes is None:
        positional, keyword = axes.default_axes(args, kwargs)
        grown_args, grown_kwargs = axes.grow_unit_axes(args, kwargs, positional, keyword)
        return axes.torch_export_spec(model, positional, keyword), grown_args, grown_kwargs, (positional, keyword)
    if dynamic_shapes is False:
        return None, args, kwargs, None
    if dynamic_shapes is True:
        raise ValueError("dynamic_shapes=True is not a spec: leave it unset (None) for the default symbolic axes, "
                         "pass False for a static file, or a dict/tuple in torch.export form")
    axes.check_user_spec(dynamic_shapes, args, kwargs)
    return dynamic_shapes, args, kwargs, None


# Fold only nodes whose inputs are this small: shape arithmetic and zero biases get folded (so ONNX Runtime can fuse
# BatchNorm and its own quantizer sees constant biases), while stored float16 weights are never upcast into float32.
_FOLD_INPUT_LIMIT = 64


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Silence the exporter's chatter (e.g. 'torchvision is not installed') for the duration of an export."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """No warnings, logger chatter or stdout from the exporter."""
    with warnings.catch_warnings(), _quiet_loggers("torch.onnx", "onnxscript"), open(os.devnull, "w") as devnull, \
            contextlib.redirect_stdout(devnull):
        warnings.simplefilter("ignore")
        yield


def check_target(path: str | os.PathLike) -> Path:
    """The ``.onnx`` target path, refused with one line when its directory is missing or its suffix is wrong."""
    target = Path(path)
    if not target.parent.exists():
        raise FileNotFoundError(f"output directory {str(target.parent)!r} does not exist; create it first")
    if target.suffix != ".onnx":
        raise ValueError(f"the output path should end in .onnx, got {str(target)!r}")
    return target


def trace_to_onnx(model: nn.Module, args: tuple, *, kwargs: dict | None = None, opset: int | None = None,
                  dynamic_shapes: Any = None, input_names: list[str] | None = None,
                  output_names: list[str] | None = None, floor_softmax: bool = False) -> Any:
    """torch.export -> ONNX with mixq's lowering table, the exporter's clean-up and residual LayerNorms kept off
    ONNX Runtime's slow ``SkipLayerNormalization`` (``mixq.export.onnx.layernorm``), float layers between int8
    ones kept float there (``mixq.export.onnx.float_layers``), quietly; with
    ``floor_softmax``, masked Softmax inputs floored off the denormal slow path (``mixq.export.onnx.softmax``).
    The ``ModelProto``. Shared by ``export_onnx`` and the key/value-cache decoder export."""
    from mixq.export.onnx.float_layers import keep_float_layers_float
    from mixq.export.onnx.layernorm import keep_layernorm_unfused
    from mixq.export.onnx.softmax import floor_masked_softmax
    from mixq.export.onnx.translations import translation_table  # onnx/onnxscript are only imported when exporting

    with _quiet_export():
        program = torch.onnx.export(
            model, args, kwargs=kwargs or None, dynamo=True, opset_version=opset, dynamic_shapes=dynamic_shapes,
            custom_translation_table=translation_table(), input_names=input_names, output_names=output_names,
            verbose=False, optimize=False,
        )
        _optimize(program)
    proto = program.model_proto
    keep_layernorm_unfused(proto)
    keep_float_layers_float(proto)
    if floor_softmax and (floored := floor_masked_softmax(proto)):
        log.info("floored %d masked Softmax input(s): this CPU computes their underflowing exp slowly", floored)
    return proto


def _optimize(program: Any) -> None:
    """The exporter's graph clean-up (constant folding, dead code) with a small folding limit."""
    import onnxscript.optimizer

    program.model = onnxscript.optimizer.optimize(program.model, input_size_limit=_FOLD_INPUT_LIMIT)


def finalize(model: Any, half_io: bool = False) -> None:
    """Drop the exporter's per-node debug records (source stack, FX node, class path: often most of the file),
    and with ``half_io`` turn float32 graph inputs/outputs into float16 ones behind Cast nodes."""
    for graph in [model.graph, *(f for f in model.functions)]:
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
    if half_io:
        _half_io(model.graph)


def _half_io(graph: Any) -> None:
    """Float16 at the boundary, float32 inside: Cast each float32 input up and each float32 output down."""
    from onnx import TensorProto, helper

    head, tail = [], []
    for value in graph.input:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            inner = value.name + "_float32"
            for node in graph.node:
                node.input[:] = [inner if name == value.name else name for name in node.input]
            head.append(helper.make_node("Cast", [value.name], [inner], to=TensorProto.FLOAT))
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    for value in graph.output:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            inner = value.name + "_float32"
            for node in graph.node:
                node.output[:] = [inner if name == value.name else name for name in node.output]
                node.input[:] = [inner if name == value.name else name for name in node.input]
            tail.append(helper.make_node("Cast", [inner], [value.name], to=TensorProto.FLOAT16))
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    nodes = head + list(graph.node) + tail
    del graph.node[:]
    graph.node.extend(nodes)


def softmax_floor_for(model: nn.Module, runtime: str | None, softmax_floor: bool | None) -> bool:
    """Whether the file floors masked Softmax inputs: ``softmax_floor`` where given, else as the file's runtime
    decides on this machine (``Runtime.floors_masked_softmax``). The runtime is checked either way."""
    if softmax_floor is not None and not isinstance(softmax_floor, bool):
        raise TypeError(f"softmax_floor must be True, False or None, got {softmax_floor!r}")
    target = file_runtime(model, "onnx", runtime)
    return target.floors_masked_softmax() if softmax_floor is None else softmax_floor


def refuse_row_rounding(model: nn.Module) -> None:
    """A model quantized for LiteRT has Linears (static with a float output, weight-only) that round their input
    per row at run time: no ONNX Runtime kernel computes that, so the file could not compute what the model does."""
    rows = [name for name, per_row in float_output_linears(model).items() if per_row]
    if rows:
        raise ExportError(f"layer {rows[0]!r} ({len(rows)} in all) was quantized for LiteRT (runtime='litert'): it "
                          "rounds its input per row at run time, which no ONNX Runtime kernel does; quantize again "
                          "without runtime='litert' to write an .onnx file")


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    dynamic_shapes: Any = None,
    opset: int | None = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    io_dtype: str | torch.dtype = "float32",
    runtime: str | None = None,
    softmax_floor: bool | None = None,
) -> Path:
    """Export ``model`` (quantized by mixq or plain float) to ``path`` and return the path.

    Quantized layers become the QDQ / integer patterns ONNX Runtime fuses into integer kernels (QLinearConv,
    QLinearMatMul, MatMulIntegerToFloat, DynamicQuantizeMatMul, MatMulNBits); float16 layers keep float16 weights
    with float32 inputs and outputs unless ``io_dtype="float16"`` asks for float16 ones (Casts at the graph
    boundary; the names are ``export_tflite``'s, and ``torch.float16`` is accepted too). The file is written to a
    temporary name and renamed only after checks (the model runs on the example in PyTorch; ONNX Runtime loads the
    file and runs it on the example), so a failed export never leaves a file at ``path``.

    Shapes: by default (``dynamic_shapes=None``) the batch axis of every input is symbolic (named ``batch``, also
    from a batch-1 example), and so is the sequence axis (``sequence``) of token inputs (integer ids, attention
    masks, token types, positions) and of any input sharing their length, so one transformer file serves any batch
    and sequence length the model accepts. An axis the model itself fixes stays static. ``dynamic_shapes=False``
    writes a fully static file; a dict/tuple in ``torch.export`` form (``{"input_ids": {0: Dim("b")}}``) is passed
    through. ``mixq.export.onnx.shapes.symbolic_axes(onnx.load(path))`` lists what the file accepts.

    ``runtime`` names the runtime the file is for (``"ort"`` or ``"openvino"``; default: the one the model was
    quantized for, else ONNX Runtime). For ONNX Runtime on a CPU that computes denormals slowly (Intel), masked
    attention Softmax inputs are floored so their ``exp`` does not underflow (``mixq.export.onnx.softmax``: the
    same outputs, 1.26x faster on a padded int8 MiniLM, 11-18% slower with no padding at all); OpenVINO files
    are not, since OpenVINO fuses attention into its own kernel. ``softmax_floor=True`` / ``False`` decides it
    instead (e.g. ``False`` for a service that never pads or masks).

    Example: ``mixq.export_onnx(qmodel, torch.randn(1, 3, 32, 32), "model.onnx")``.
    """
    import onnx

    refuse_observed(model, "export")
    check_finite(model, "export")
    refuse_row_rounding(model)
    target = check_target(path)
    io_dtype = io_dtype_name(io_dtype, IO_DTYPES)
    if opset is not None and opset < MIN_OPSET:
        raise ValueError(f"opset {opset} cannot express per-channel QuantizeLinear/DequantizeLinear; "
                         f"use opset >= {MIN_OPSET} (or leave it unset)")
    check_writable(target.parent, fix="export to a directory you can write to")
    floor_softmax = softmax_floor_for(model, runtime, softmax_floor)
    args, kwargs = example_args(example_inputs, "export_onnx")
    model = model.eval()
    spec, export_args, export_kwargs, named = _shape_plan(model, dynamic_shapes, args, kwargs)
    try:
        with _without_cache(model, kwargs), atomic_path(target) as tmp:
            output = check_model_runs(model, args, kwargs)
            output_names = output_names or output_names_of(output)
            proto = trace_to_onnx(model, export_args, kwargs=export_kwargs, opset=opset, dynamic_shapes=spec,
                                  input_names=input_names, output_names=output_names,
                                  floor_softmax=floor_softmax)
            finalize(proto, half_io=io_dtype == "float16")
            if named is not None:
                shapes.name_symbolic_dims(proto, *named)
            log.info("input shapes of %s: %s", target.name, shapes.symbolic_axes(proto))
            onnx.save(proto, tmp)  # one serialisation, straight from the in-memory model; renamed on success
            check_runtime_runs(tmp, args, kwargs)  # the file replaces the target only if ONNX Runtime runs it
    except Exception as err:
        raise ExportError(f"could not export {type(model).__name__} with example inputs "
                          f"{describe(example_inputs)}: {err}") from err
    log.info("exported %s to %s (%.2f MB)", type(model).__name__, target, target.stat().st_size / 1e6)
    return target

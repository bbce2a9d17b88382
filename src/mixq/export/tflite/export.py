"""``mixq.export_tflite``: write a mixq model as a ``.tflite`` file for LiteRT, in the mode its layers were quantized.

* static / QAT-converted model -> full-integer: int8 kernels with mixq's own scales and zero points (graph-mode
  models included: integer attention MatMuls; a Linear whose output mixq keeps float runs as a float
  FULLY_CONNECTED on its int8 input grid and weights, see ``QuantConfig.float_outputs``);
* ``mode="dynamic"`` -> dynamic-range: int8 weights (mixq's), activations quantized by the kernels at run time;
* ``mode="weight_only"`` -> mixq's int8 per-channel / int4 weights in LiteRT's integer-weight layers
  (``weight_only``; a causal LM with a key/value cache goes through ``export_decoder_tflite``);
* ``mode="fp16"`` -> float16 weights, float32 compute;
* a float model -> float32.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from mixq.export.errors import ExportError
from mixq.export.inputs import io_dtype_name
from mixq.export.tflite.check import check_file, float_activations, named_outputs, rounds_at_run_time
from mixq.export.tflite.converter import captured_output, convert_to_tflite, require_litert
from mixq.export.tflite.integer_io import integer_io
from mixq.export.tflite.lowering import (
    ActivationQParams,
    DynamicRangeWeights,
    Float16Weights,
    lower,
    lowering_of,
)
from mixq.export.tflite.recipes import apply_recipe
from mixq.export.tflite.weight_only import WeightOnlyWeights, refuse_weight_only, store_weight_only
from mixq.messages import first_line
from mixq.quant.calibration import describe
from mixq.quant.finiteness import check_finite
from mixq.quant.modules.observed import refuse_observed
from mixq.quant.modules.registry import quantized_classes
from mixq.quant.modules.rows import float_output_linears
from mixq.report.files import atomic_path

IO_DTYPES = ("float32", "int8", "uint8")  # export_tflite's io_dtype names (mixq.export.inputs)
log = logging.getLogger(__name__)


def _as_inputs(example_inputs: Any) -> tuple[tuple, dict[str, torch.Tensor]]:
    """Positional or keyword example inputs; keyword ones become the file's inputs of the same names."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(a, torch.Tensor) for a in example_inputs):
        return tuple(example_inputs), {}
    if isinstance(example_inputs, Mapping) and example_inputs and all(
            isinstance(k, str) and k.isidentifier() and isinstance(v, torch.Tensor) for k, v in example_inputs.items()):
        return (), dict(example_inputs)
    raise TypeError(f"example_inputs must be a tensor, a tuple of tensors or a dict of named tensors (e.g. "
                    f"input_ids, attention_mask) for export_tflite, got {describe(example_inputs)}")


def _litert_mode(model: nn.Module, modes: dict[str, str]) -> str:
    """The one LiteRT mode of the model's quantized layers; a layer LiteRT cannot take is named in the error."""
    for name, module in model.named_modules():
        if isinstance(module, quantized_classes()) and lowering_of(module) is None:
            raise ExportError(f"layer {name!r} ({type(module).__name__}) has no LiteRT form; keep it fp32 "
                              f"(mixq.quantize(..., exclude=[{name!r}])) or write an .onnx file")
    kinds = sorted(set(modes.values()))
    if len(kinds) > 1:
        example = {k: next(n for n, m in modes.items() if m == k) for k in kinds}
        raise ExportError("a .tflite file holds one quantization mode, but this model mixes "
                          + ", ".join(f"{k} ({example[k]!r}, ...)" for k in kinds)
                          + "; give those layers one mode, or fp32")
    return kinds[0] if kinds else "float32"


class _Boundary(nn.Module):
    """The file's I/O layout: NHWC inputs transposed to the model's NCHW and 4-D outputs back to NHWC."""

    def __init__(self, inner: nn.Module, nhwc: bool) -> None:
        super().__init__()
        self.inner, self.nhwc = inner, nhwc

    def forward(self, *args: torch.Tensor) -> Any:
        xs = [x.permute(0, x.dim() - 1, *range(1, x.dim() - 1)) if self.nhwc and x.dim() > 2 else x for x in args]
        outs = self.inner(*xs)
        if not self.nhwc:
            return outs
        single = isinstance(outs, torch.Tensor)
        ys = [y.permute(0, *range(2, y.dim()), 1) if y.dim() > 2 else y for y in ([outs] if single else outs)]
        return ys[0] if single else tuple(ys)


def _boundary_qparams(lowered: nn.Module, args: tuple) -> tuple[list[ActivationQParams], list[ActivationQParams]]:
    """The activation grids that quantize each graph input and produce each graph output (integer I/O needs them)."""
    seen: list[tuple[ActivationQParams, torch.Tensor, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append((mod, inp[0], out)))
             for m in lowered.modules() if isinstance(m, ActivationQParams)]
    try:
        with torch.no_grad():
            outs = lowered(*args)
    finally:
        for h in hooks:
            h.remove()
    outs = [outs] if isinstance(outs, torch.Tensor) else list(outs)
    in_q, out_q = [], []
    for k, x in enumerate(args):
        grids = {(m.scale, m.zero_point): m for m, inp, _ in seen if inp is x}
        if len(grids) != 1:
            raise ExportError(f"integer I/O needs input {k} to feed quantized layers directly (on one scale); it "
                              f"{'feeds float operations first' if not grids else 'feeds several scales'}: "
                              "use io_dtype='float32'")
        in_q.append(next(iter(grids.values())))
    for k, y in enumerate(outs):
        producer = [m for m, _, out in seen if out is y]
        if not producer:
            raise ExportError(f"integer I/O needs output {k} to come from a quantized layer; it comes from a float "
                              "operation: use io_dtype='float32'")
        out_q.append(producer[0])
    return in_q, out_q


def _failing_layer(err: BaseException, model: nn.Module) -> str | None:
    """The layer whose graph node the converter was lowering when ``err`` was raised (None if it does not say)."""
    tb, where = err.__traceback__, None
    while tb is not None:
        node = tb.tb_frame.f_locals.get("node")
        if isinstance(node, fx.Node) and node.meta.get("nn_module_stack"):
            path, cls = list(node.meta["nn_module_stack"].values())[-1]
            name = path.removeprefix("L['self'].").removeprefix("inner").removeprefix(".")
            kind = (cls if isinstance(cls, str) else cls.__qualname__).split(".")[-1]
            layer = f"layer {name!r} ({kind})" if name else f"the forward of {type(model).__name__}"
            where = f"{layer}: {getattr(node.target, '__name__', node.target)}"
        tb = tb.tb_next
    return where


def _simulated(model: nn.Module, args: tuple, kwargs: dict, nhwc: bool) -> dict[str, np.ndarray]:
    """mixq's PyTorch simulation of ``model`` in eval mode (as the file runs) on the example, named and laid out
    as the file's outputs; the model's train/eval flags are left as they were."""
    training = {m: m.training for m in model.modules()}
    try:
        with torch.no_grad():
            outs = named_outputs(model.eval()(*args, **kwargs))
    except Exception as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"{type(model).__name__} does not run on the example inputs {describe(args or kwargs)} in "
                          f"PyTorch ({type(err).__name__}: {detail}); pass inputs shaped like the model's") from err
    finally:
        for m, flag in training.items():
            m.training = flag
    return {k: np.moveaxis(v, 1, -1) if nhwc and v.ndim > 2 else v for k, v in outs.items()}


def _layer_weights(lowered: nn.Module, args: tuple, kwargs: dict) -> list[np.ndarray]:
    """The float weights of the lowered dynamic-range / float16 layers whose output reaches a model output on the
    example, which ``recipes`` finds in the file. A layer the forward pass never calls, or whose output is dropped
    (a Hugging Face pooler computed and then discarded by a wrapper returning ``last_hidden_state``), is not in the
    file: the converter removes dead code. Reaching is autograd's: each layer's output gets a zero added that
    requires a gradient, and the layers whose zero gets none are dead."""
    kinds = (DynamicRangeWeights, Float16Weights)
    layers = [m for m in lowered.modules() if isinstance(m, kinds)]
    if not layers:
        return []
    probes = {id(m): torch.zeros((), requires_grad=True) for m in layers}
    hooks = [m.register_forward_hook(lambda mod, inp, out: out + probes[id(mod)]) for m in layers]
    try:
        with torch.enable_grad():
            outs = lowered(*args, **kwargs)
            leaves = [t for t in torch.utils._pytree.tree_leaves(dict(outs) if isinstance(outs, Mapping) else outs)
                      if isinstance(t, torch.Tensor) and t.requires_grad]
            total = sum(t.float().sum() for t in leaves)
            grads = torch.autograd.grad(total, list(probes.values()), allow_unused=True) if leaves else []
    finally:
        for h in hooks:
            h.remove()
    live = {key for key, g in zip(probes, grads, strict=False) if g is not None}
    return [m.weight.numpy() for m in layers if id(m) in live]


def checked_target(model: nn.Module, path: str | os.PathLike) -> Path:
    """The output path of a LiteRT export, after the checks every one makes first: LiteRT installed, a float
    (converted, finite) model, a ``.tflite`` path in an existing directory."""
    require_litert()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    refuse_observed(model, "export")
    check_finite(model, "export")
    target = Path(path)
    if target.suffix != ".tflite":
        raise ValueError(f"the output path should end in .tflite, got {str(target)!r}")
    if not target.parent.exists():
        raise FileNotFoundError(f"output directory {str(target.parent)!r} does not exist; create it first")
    return target


def say_hybrids_differ(model: nn.Module) -> None:
    """One warning when Linears with integer weights and a float output (static ones whose output stays float,
    weight-only ones) were quantized for ONNX Runtime (input on a calibrated grid, or float): LiteRT's kernels
    round their input per row instead, so the file is not what mixq simulates."""
    grid = [name for name, per_row in float_output_linears(model).items() if not per_row]
    if grid:
        warnings.warn(f"{len(grid)} Linears with integer weights and a float output ({grid[0]!r}, ...) were "
                      "quantized for ONNX Runtime: LiteRT runs them as kernels that round their input per row, "
                      "which mixq's simulation of this model does not; quantize with runtime='litert' for a file "
                      "that computes what mixq simulates", stacklevel=3)


def export_tflite(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    io_dtype: str | torch.dtype = "float32",
    nhwc: bool = False,
    dynamic_batch: bool = False,
) -> Path:
    """Write ``model`` (quantized by mixq, or float) to ``path`` as a LiteRT ``.tflite`` file and return the path.

    The mode follows the model: a static or QAT-converted model becomes a full-integer file (int8 kernels with
    mixq's own calibrated / learned scales and zero points), ``mode="dynamic"`` a dynamic-range file (mixq's int8
    weights), ``mode="fp16"`` a float16 file, a float model a float32 file. ``io_dtype="int8"`` or ``"uint8"``
    (full-integer only; ``torch.int8`` / ``torch.uint8`` are accepted too, as ``export_onnx`` accepts its
    ``io_dtype`` names and dtypes) gives integer inputs and outputs on the first and last layer's grids, for
    pipelines and microcontrollers that feed integers; ``nhwc=True`` takes and returns channels-last tensors so a camera
    pipeline needs no transpose. The batch is fixed to the example's (edge inference runs batch 1);
    ``dynamic_batch=True`` makes it resizable, which litert-torch supports for convolution stacks but not yet
    for a reshape/flatten of the batch (the export then fails naming that layer). ``example_inputs`` may be a
    dict of named tensors (a Hugging Face model's ``input_ids``, ``attention_mask``): the file then takes its
    inputs under those names. The file is run in LiteRT on ``example_inputs`` and compared with mixq's PyTorch
    simulation (``mixq.export.tflite.check``) before it atomically replaces ``path``: a file that disagrees is
    refused with ``ExportError`` and nothing is written.

    Needs the optional extra: ``pip install 'mixq[litert]'``.

    Example: ``mixq.export_tflite(qmodel, torch.randn(1, 3, 32, 32), "model.tflite")``.
    """
    target = checked_target(model, path)
    io_dtype = io_dtype_name(io_dtype, IO_DTYPES)
    args, kwargs = _as_inputs(example_inputs)
    if kwargs and (nhwc or io_dtype != "float32"):
        raise ValueError("nhwc=True and integer io_dtype take positional example inputs (images, features), not a "
                         "dict of named inputs")
    refuse_weight_only(model)
    say_hybrids_differ(model)
    lowered, modes = lower(model)
    mode = _litert_mode(model, modes)
    if io_dtype != "float32" and mode != "full_integer":
        raise ValueError(f"io_dtype={io_dtype!r} needs a full-integer model (mixq.quantize(..., 'static') or a "
                         f"QAT-converted model); this one is {mode.replace('_', '-')}")
    in_q, out_q = _boundary_qparams(lowered, args) if io_dtype != "float32" else ([], [])
    module = _Boundary(lowered, nhwc).eval() if not kwargs else lowered
    file_args = tuple(a.permute(0, *range(2, a.dim()), 1).contiguous() if nhwc and a.dim() > 2 else a for a in args)
    feeds = kwargs or {f"args_{k}": a for k, a in enumerate(file_args)}
    expected = _simulated(model, args, kwargs, nhwc)
    reference = None
    if rounds_at_run_time(model):  # LiteRT rounds activations on its own grid: see mixq.export.tflite.check
        with float_activations(model):
            reference = _simulated(model, args, kwargs, nhwc)
    log_text: list[str] = []
    try:
        with atomic_path(target) as tmp, warnings.catch_warnings(), captured_output(log_text):
            warnings.simplefilter("ignore")
            content = convert_to_tflite(module, file_args, kwargs, quantized=mode == "full_integer",
                                                  float_io=io_dtype == "float32", dynamic_batch=dynamic_batch)
            weights = _layer_weights(lowered, args, kwargs)  # dynamic-range / float16 / full-integer hybrid layers
            if weights and mode != "weight_only":
                content = apply_recipe(content, "dynamic_range" if mode == "full_integer" else mode, weights)
            if mode == "weight_only":
                content = store_weight_only(content, [m for m in lowered.modules() if isinstance(m, WeightOnlyWeights)])
            if io_dtype != "float32":
                content = integer_io(content, in_q, out_q, io_dtype)
            error = check_file(content, feeds, expected, mode, reference)
            tmp.write_bytes(content)
    except ExportError:
        raise
    except Exception as err:
        where = _failing_layer(err, model)
        if where is not None:
            raise ExportError(f"LiteRT cannot express {where}; keep that layer out of the exported model or "
                              "replace the operation") from err
        detail = first_line(err)
        errors = [ln.strip() for ln in "".join(log_text).splitlines() if "error" in ln.lower()]
        tail = errors[-1] if errors else ""
        raise ExportError(f"could not convert {type(model).__name__} to LiteRT with example inputs "
                          f"{describe(example_inputs)}: {detail}" + (f" ({tail})" if tail else "")) from err
    log.info("exported %s to %s (%s, %.3f MB, %.2g relative RMS error vs mixq's simulation)", type(model).__name__,
             target, mode, target.stat().st_size / 1e6, error)
    return target



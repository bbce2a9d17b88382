"""``mixq.quantize``: one entry point for static, dynamic, weight-only and float16 post-training quantization."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
from torch import nn

from mixq.quant.calibration import Batch, call_checked, run_batches
from mixq.quant.fusion import apply_fusions, find_fusions, set_submodule, trace_calls
from mixq.quant.graph import apply_graph_mode
from mixq.quant.modules import (
    DynamicQuantizedConv,
    DynamicQuantizedLinear,
    Float16Conv,
    Float16Linear,
    FloatAdd,
    ObservedAdd,
    ObservedLayer,
    QuantizedAdd,
    QuantizedConv,
    QuantizedEmbedding,
    QuantizedLinear,
    WeightOnlyConv,
    WeightOnlyLinear,
)
from mixq.quant.observers import make_observer
from mixq.quant.planning import excluded, plan, split_first
from mixq.quant.spec import DEFAULT_ACTIVATION, ObserverSpec, QuantConfig, QuantSpec
from mixq.quant.summary import QuantizationSummary, module_bytes


def make_config(mode: str, *, observer: str = "minmax", bits: int = 8, group_size: int | None = None,
                per_channel: bool = True, activation_dtype: str = "uint8", reduce_range: bool = False,
                exclude: Iterable[str] = ()) -> QuantConfig:
    """Build a validated ``QuantConfig`` from ``quantize``'s keyword arguments."""
    if mode == "weight_only" and bits not in (4, 8):
        raise ValueError(f"weight_only needs bits 4 or 8 (MatMulNBits / int8), got {bits!r}")
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be between 2 and 8 (weights below 8 bits are stored as int8), got {bits!r}")
    if reduce_range:
        if mode not in ("static", "dynamic") or bits != 8:
            raise ValueError("reduce_range applies to 8-bit static and dynamic modes (it keeps weights to 7 bits)")
        bits = 7
    if group_size is not None:
        granularity = "per_group"
    else:
        granularity = "per_channel" if per_channel else "per_tensor"
    if mode == "weight_only" and bits == 4 and group_size is None and per_channel:
        granularity, group_size = "per_group", 128
    weight = QuantSpec("int8", bits=bits, granularity=granularity, group_size=group_size)
    if activation_dtype not in ("uint8", "int8"):
        raise ValueError(f"activation_dtype must be 'uint8' or 'int8', got {activation_dtype!r}")
    activation = DEFAULT_ACTIVATION if activation_dtype == "uint8" else QuantSpec(
        "int8", symmetric=False, granularity="per_tensor", narrow_range=False)
    if isinstance(exclude, str):
        raise TypeError(f"exclude must be a list of name patterns, e.g. exclude=[{exclude!r}]")
    return QuantConfig(mode, weight=weight, activation=activation, observer=ObserverSpec(observer),
                       exclude=tuple(exclude))


def _swap(model: nn.Module, name: str, new: nn.Module, summary: QuantizationSummary, detail: str) -> None:
    old = model.get_submodule(name)
    layer = old.layer if isinstance(old, ObservedLayer) else old
    summary.add(name, type(layer).__name__, "quantized", detail, module_bytes(layer), module_bytes(new))
    set_submodule(model, name, new)


def _convert_static(model: nn.Module, names: list[str], cfg: QuantConfig, summary: QuantizationSummary) -> None:
    for name in names:
        observed: ObservedLayer = model.get_submodule(name)
        layer = observed.layer
        if not (observed.input_observer.has_data and observed.output_observer.has_data):
            set_submodule(model, name, layer)
            summary.add(name, type(layer).__name__, "float", "never executed during calibration")
            continue
        x_q = observed.input_observer.calculate_qparams()
        y_q = observed.output_observer.calculate_qparams()
        cls = QuantizedLinear if isinstance(layer, nn.Linear) else QuantizedConv
        new = cls(layer, cfg.weight, x_q, y_q, relu=observed.relu)
        detail = f"static w:{cfg.weight} a:{cfg.activation} ({cfg.observer.name})"
        _swap(model, name, new, summary, detail + (", relu fused" if observed.relu else ""))


def _convert_adds(model: nn.Module, names: list[str], cfg: QuantConfig, summary: QuantizationSummary) -> None:
    for name in names:
        observed: ObservedAdd = model.get_submodule(name)
        observers = (observed.a_observer, observed.b_observer, observed.output_observer)
        if not all(o.has_data for o in observers):  # unreached, or an add of shapes/ints rather than tensors
            set_submodule(model, name, FloatAdd(observed.relu))
            continue
        a_q, b_q, y_q = (o.calculate_qparams() for o in observers)
        set_submodule(model, name, QuantizedAdd(a_q, b_q, y_q, relu=observed.relu))
        detail = f"static a:{cfg.activation} ({cfg.observer.name})" + (", relu fused" if observed.relu else "")
        summary.add(name, "add", "quantized", detail)


def _convert_weights(model: nn.Module, names: list[str], cfg: QuantConfig, summary: QuantizationSummary) -> None:
    for name in names:
        layer = model.get_submodule(name)
        linear = isinstance(layer, nn.Linear)
        if cfg.mode == "dynamic":
            new = DynamicQuantizedLinear(layer, cfg.weight) if linear else DynamicQuantizedConv(layer, cfg.weight)
        elif cfg.mode == "weight_only":
            new = WeightOnlyLinear(layer, cfg.weight) if linear else WeightOnlyConv(layer, cfg.weight)
        else:
            new = Float16Linear(layer) if linear else Float16Conv(layer)
        detail = "float16 weights" if cfg.mode == "fp16" else f"{cfg.mode} w:{cfg.weight}"
        _swap(model, name, new, summary, detail)
    if cfg.mode == "dynamic" and any(isinstance(model.get_submodule(n), DynamicQuantizedConv) for n in names):
        summary.notes.append("dynamic convolutions run as ConvInteger, which ONNX Runtime executes several times "
                             "slower than float Conv on x86 CPUs (6x on ResNet-18 in benchmarks/bench_ptq.py); "
                             "use mode='static' for CNNs, or exclude the convolutions")


def quantize(
    model: nn.Module,
    mode: str = "static",
    *,
    calib_data: Iterable[Batch] | None = None,
    observer: str = "minmax",
    bits: int = 8,
    group_size: int | None = None,
    per_channel: bool = True,
    activation_dtype: str = "uint8",
    reduce_range: bool = False,
    exclude: Iterable[str] = (),
    example_inputs: Batch | None = None,
    max_calib_batches: int | None = None,
    progress: bool = True,
    config: QuantConfig | None = None,
) -> nn.Module:
    """Return a quantized copy of ``model`` (the original is never modified), with ``.mixq_summary`` attached.

    Modes: ``"static"`` (int8 weights and activations; needs ``calib_data``, an iterable of batches: tensors,
    tuples of positional tensors or dicts of keyword tensors), ``"dynamic"`` (int8 weights, activations quantized
    per call), ``"weight_only"`` (``bits=8`` per-channel or ``bits=4`` with ``group_size``, default 128) and
    ``"fp16"``. ``reduce_range=True`` keeps int8 weights within 7 bits ([-63, 63]) so x86 CPUs without VNNI, whose
    uint8 x int8 kernels add pairs of products in saturating 16-bit registers, cannot overflow (ONNX Runtime's own
    advice for such machines); it costs one bit of weight precision.

    Conv+BatchNorm(+ReLU) are folded first, from a probe of the real dataflow (the first calibration batch, or
    ``example_inputs`` in the other modes). Static mode then traces the model with ``torch.fx`` where it can, to
    quantize residual adds and share scales along the dataflow (see ``mixq.quant.graph``).

    Example::

        qmodel = mixq.quantize(model, "static", calib_data=batches, observer="percentile")
        print(qmodel.mixq_summary)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    cfg = config or make_config(mode, observer=observer, bits=bits, group_size=group_size,
                                per_channel=per_channel, activation_dtype=activation_dtype,
                                reduce_range=reduce_range, exclude=exclude)
    probe = example_inputs
    batches: Iterable[Batch] | None = None
    if cfg.mode == "static":
        if calib_data is None:
            raise ValueError("static quantization needs calib_data: a few hundred representative inputs as an "
                             "iterable of batches (or use mode='dynamic', which needs none)")
        probe, batches = split_first(calib_data)

    qmodel = copy.deepcopy(model).eval()
    summary = QuantizationSummary(cfg.mode)
    relu_layers: set[str] = set()
    if cfg.fold_batchnorm and probe is not None:
        fusions = [f for f in find_fusions(trace_calls(qmodel, lambda m: call_checked(m, probe)))
                   if not excluded(f.layer, cfg.exclude)]
        if cfg.mode != "static":
            for f in fusions:
                f.relu = None
        relu_layers = apply_fusions(qmodel, fusions)
        summary.notes += [f"folded {f.batchnorm} into {f.layer}" for f in fusions if f.batchnorm]
    targets = plan(qmodel, cfg, summary)

    embeddings = [n for n in targets if isinstance(qmodel.get_submodule(n), nn.Embedding)]
    targets = [n for n in targets if n not in embeddings]
    for name in embeddings:
        _swap(qmodel, name, QuantizedEmbedding(qmodel.get_submodule(name), cfg.weight), summary,
              "int8 table, per-row scales")
    if cfg.mode == "static" and cfg.activation.torch_dtype == torch.int8:
        summary.notes.append("int8 activations: ONNX Runtime's x86 kernels are fastest with uint8 activations; "
                             "with int8 some layers may fall back to float Conv and adds stay float")
    if cfg.mode == "static" and targets:
        for name in targets:
            layer = qmodel.get_submodule(name)
            obs_in = make_observer(cfg.observer, cfg.activation, name=f"{name} (input)")
            obs_out = make_observer(cfg.observer, cfg.activation, name=f"{name} (output)")
            set_submodule(qmodel, name, ObservedLayer(layer, obs_in, obs_out, relu=name in relu_layers))
        qmodel, adds = apply_graph_mode(
            qmodel, lambda name: make_observer(cfg.observer, cfg.activation, name=name), summary.notes)
        run_batches(qmodel, batches, progress=progress, max_batches=max_calib_batches)  # type: ignore[arg-type]
        _convert_static(qmodel, targets, cfg, summary)
        _convert_adds(qmodel, adds, cfg, summary)
    elif targets:
        _convert_weights(qmodel, targets, cfg, summary)

    order = {name: i for i, (name, _) in enumerate(qmodel.named_modules())}
    summary.layers.sort(key=lambda r: order.get(r.name, len(order)))
    if not summary.quantized:
        warnings.warn(f"nothing in {type(model).__name__} could be quantized (no Linear/Conv1d/Conv2d layers "
                      "left after exclusions); returning it in float", stacklevel=2)
    qmodel.mixq_summary = summary
    qmodel.mixq_config = cfg
    return qmodel

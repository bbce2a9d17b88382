"""The conversion stage (``convert_prepared``): turn a calibrated ``Prepared`` model into quantized modules, layer by
layer, per config.

Each layer gets the mode its ``QuantConfig`` resolves for it (overrides included) and the module the layer-kind
registry holds for that mode: static layers take their activation ranges from the observers, other modes swap in
their modules, ``"fp32"`` layers stay float (a ReLU that
was fused into them comes back as ``nn.ReLU``). Observer ranges come from the statistics calibration gathered; when
the config asks for another observer than the one that gathered them (min-max from a histogram, percentile instead
of MSE, ...), the range is derived from the same statistics, so one calibration serves every config.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import fx, nn

from mixq.pretrained import mark_saveable
from mixq.quant.adaround import dequantized, on_grid
from mixq.quant.bias_correction import corrected, corrects
from mixq.quant.fusion import relu_module, saturation_clamps, set_submodule
from mixq.quant.graft import copy_model, graft
from mixq.quant.modules import (
    DynamicQuantizedConv,
    FloatAdd,
    FloatMatMul,
    ObservedAdd,
    ObservedLayer,
    ObservedMatMul,
    QuantizedAdd,
    QuantizedMatMul,
)
from mixq.quant.modules.observed import unfold_pad
from mixq.quant.modules.registry import kind_name, qmodule_class, refusal
from mixq.quant.modules.weight_only import GroupParams
from mixq.quant.observers import Observer, make_observer
from mixq.quant.planning import excluded
from mixq.quant.spec import ObserverSpec, QuantConfig
from mixq.quant.stages import Prepared
from mixq.quant.summary import QuantizationSummary, module_bytes

QParams = tuple[torch.Tensor, torch.Tensor]
# a calibrated range that saturates more than this share of its tensor's calibration values is reported: clipping
# methods (percentile, MSE, entropy) cut well under 0.1 % of the values of the distributions they were made for
CLIPPED_SHARE_LIMIT = 0.01


def derive_observer(source: Observer, spec: ObserverSpec) -> Observer:
    """An observer of kind ``spec`` holding ``source``'s statistics, as the observers' declared ``capabilities``
    allow: the same statistics (same histogram bins) load as they are, and a range observer takes any observer's
    min and max (so a histogram yields every per-tensor kind)."""
    target = make_observer(spec, source.spec, name=source.name)
    kind, source_kind = target.capabilities.statistics, source.capabilities.statistics
    if kind == source_kind and getattr(target, "bins", None) == getattr(source, "bins", None):
        target.load_state_dict(source.state_dict())
    elif kind == "range":
        target.min_val, target.max_val = source.min_val.clone(), source.max_val.clone()
        target.num_batches.copy_(source.num_batches)
    else:
        raise ValueError(f"the {spec.name!r} observer (bins={spec.bins}) cannot be derived from the statistics a "
                         f"{type(source).__name__} gathered; calibrate with it instead")
    return target


class _Ranges:
    """Quantization parameters per observer, derived once per observer so shared tensors keep one scale.

    Results are also kept on the ``Prepared`` model, keyed by the observer's module path and the observer spec, so
    converting the same calibration under many configs computes each range once (MSE and entropy searches are slow).
    """

    def __init__(self, prepared: Prepared, config: QuantConfig, static: set[str], model: nn.Module) -> None:
        self.built = prepared.observer_specs
        self.config, self.static = config, static
        self.owner: dict[int, str] = {}
        for name in prepared.observed + prepared.adds:
            output = getattr(model.get_submodule(name), "output_observer", None)  # a MatMul's output stays float
            if output is not None:
                self.owner[id(output)] = name
        self.paths = {id(m): n for n, m in model.named_modules() if isinstance(m, Observer)}
        self.cache = prepared.qparams_cache
        self.clipping: dict[str, str] = {}  # observer path -> a line naming the tensor and what its range clips
        self.checked: set[tuple] = set()  # cache keys whose range was checked for clipping

    def of(self, observer: Observer, reader: str) -> QParams:
        """Parameters for ``observer`` as read by layer ``reader``. A tensor's observer belongs to its producer when
        graph mode shared it; the producer's choice of observer decides, unless the producer is not static."""
        builder = self.owner.get(id(observer), reader)
        chooser = builder if builder in self.static else reader
        wanted = self.config.choice(chooser).observer
        key = (self.paths[id(observer)], wanted)
        if key not in self.cache:
            source = observer if wanted == self.built[builder] else derive_observer(observer, wanted)
            self.cache[key] = source.calculate_qparams()
        if key not in self.checked:  # a shared tensor is read by several layers: one check per range
            self.checked.add(key)
            self._check_clipping(observer, wanted, self.cache[key])
        return self.cache[key]

    def _check_clipping(self, observer: Observer, spec: ObserverSpec, qparams: QParams) -> None:
        """Record a line when ``qparams`` saturate a large share of ``observer``'s calibration values (read off its
        statistics: histogram observers only, whichever kind the range was derived as)."""
        share = observer.clipped_share(*qparams)
        if share is None or share <= CLIPPED_SHARE_LIMIT:
            return
        scale, zp = (float(v) for v in qparams)
        lo, hi = (observer.spec.qmin - zp) * scale, (observer.spec.qmax - zp) * scale
        self.clipping[self.paths[id(observer)]] = (
            f"{observer.name}: the {spec.name!r} range [{lo:.4g}, {hi:.4g}] clips {share:.1%} of its calibration "
            f"values (they span [{float(observer.min_val):.4g}, {float(observer.max_val):.4g}])")


def _detail(new: nn.Module, mode: str, config: QuantConfig) -> str:
    """The summary's description of a non-static quantized layer (the class's own ``describe``, if it has one)."""
    describe = getattr(new, "describe", None)
    return describe(config) if describe is not None else f"{mode} w:{config.weight}"


def _with_relu(module: nn.Module, relu: bool, relu_max: float | None = None) -> nn.Module:
    return nn.Sequential(module, relu_module(relu_max)) if relu else module


def _float_layer(layer: nn.Module, relu: bool, relu_max: float | None) -> nn.Module:
    """A layer that stays float as it computed before preparation: with the zero pad graph mode folded into it
    back in front, and the ReLU fused into it back behind."""
    return _with_relu(unfold_pad(layer), relu, relu_max)


def _relu_name(relu_max: float | None) -> str:
    return "relu" if relu_max is None else f"relu clamped at {relu_max:g}"


def _rounds_float_output_rows(config: QuantConfig) -> bool:
    """Whether the runtime the model is quantized for runs a float-output static Linear as a hybrid kernel that
    rounds its input per row at run time (LiteRT), so the simulation does too."""
    runtime = config.target_runtime()
    return runtime is not None and runtime.rounds_float_output_rows


def _bias_corrected(observed: ObservedLayer, config: QuantConfig, name: str,
                    quantized: torch.Tensor | None) -> nn.Module:
    """The layer to quantize: with ``config.bias_correction``, a copy whose bias absorbs the mean shift of weight
    rounding (``mixq.quant.bias_correction``; not where SmoothQuant scales its input). ``quantized``: the
    dequantized weight when AdaRound chose it (None: round to nearest)."""
    layer = observed.layer
    if observed.smooth is not None or not corrects(config.bias_correction, layer):
        return layer
    mean = observed.input_mean()
    if mean is None:
        if observed.track_mean:
            return layer  # tracked, but no calibration batch reached the layer: nothing to correct with
        raise ValueError(f"bias_correction needs each layer's input means from calibration, but {name!r} was "
                         "prepared without them: prepare with a config that has bias_correction=True")
    return corrected(layer, config.weight, mean, quantized)


def _static_float_layer(observed: ObservedLayer, config: QuantConfig, name: str,
                        rounded: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[nn.Module, torch.Tensor | None]:
    """The float layer a static layer is built from, and its weight scale (None: min-max): bias corrected per
    config, and with its weight on the codes AdaRound chose (``rounded``, from ``round_weights``) if any."""
    if rounded is None:
        return _bias_corrected(observed, config, name, None), None
    codes, scale = rounded
    return on_grid(_bias_corrected(observed, config, name, dequantized(codes, scale)), codes, scale), scale


def _dynamic_conv_note(config: QuantConfig) -> str:
    """What the summary says about dynamic convolutions (``ConvInteger`` in ONNX): a warning, unless runtime-aware
    precision already kept every one that runs slower float."""
    if config.runtime is not None and config.runtime_aware:
        return (f"the dynamic convolutions left int8 run as ConvInteger: runtime-aware precision found them no "
                f"slower than float on {config.runtime} here, or too small to matter")
    return ("dynamic convolutions run as ConvInteger, which ONNX Runtime executes several times slower than float "
            "Conv on x86 CPUs (6x on ResNet-18 in benchmarks/bench_ptq.py); use mode='static' for CNNs, or "
            "runtime='ort' to keep them float where they are slower")


def _convert_layer(model: nn.Module, name: str, config: QuantConfig, ranges: _Ranges,
                   summary: QuantizationSummary, weight_params: dict[str, GroupParams],
                   keep_float: Mapping[str, str] | None = None,
                   rounded: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
    module = model.get_submodule(name)
    observed = module if isinstance(module, ObservedLayer) else None
    layer, relu = (observed.layer, observed.relu) if observed else (module, False)
    relu_max = observed.relu_max if observed else None
    kind, before = kind_name(layer), module_bytes(layer)
    choice = config.choice(name)
    reason = "kept fp32 by a per-layer override" if choice.mode == "fp32" else refusal(layer, choice.mode, config)
    reason = reason or (keep_float or {}).get(name)
    if choice.mode == "static" and observed is not None and reason is None:
        float_out = observed.float_output
        if not (observed.input_observer.has_data and (float_out or observed.output_observer.has_data)):
            reason = "never executed during calibration"
        else:
            y_q = None if float_out else ranges.of(observed.output_observer, name)
            layer, w_scale = _static_float_layer(observed, config, name, (rounded or {}).get(name))
            new = qmodule_class(layer, "static").from_float(layer, config, ranges.of(observed.input_observer, name),
                                                            y_q, relu=relu, relu_max=relu_max, w_scale=w_scale)
            rows = float_out and _rounds_float_output_rows(config)  # only Linears keep a float output
            if rows:
                new.rows = True
            detail = f"static w:{config.weight} a:{config.activation} ({choice.observer.name})"
            detail += (f", {_relu_name(relu_max)} fused" if relu else "") + (", float output" if float_out else "")
            detail += f" (input rounded per row, as {config.runtime} runs it)" if rows else ""
            detail += ", SmoothQuant scales in its input" if observed.smooth is not None else ""
            detail += ", AdaRound weights" if w_scale is not None else ""
            detail += ", bias corrected" if layer.bias is not observed.layer.bias else ""
            summary.add(name, kind, "quantized", detail, before, module_bytes(new))
            if not saturation_clamps(y_q, relu_max, config.activation.qmax):  # the grid does not end at the bound
                new = nn.Sequential(new, relu_module(relu_max))
            set_submodule(model, name, new)
            return
    if reason is None and choice.mode == "static" and getattr(qmodule_class(layer, "static"), "observed", True):
        raise ValueError(f"layer {name!r} is static in this config but was not observed during calibration; "
                         "prepare it as static (or with observe_all=True)")
    if reason is not None:
        summary.add(name, kind, "float", reason)
        set_submodule(model, name, _float_layer(layer, relu, relu_max))
        return
    extra = {"params": weight_params[name]} if name in weight_params else {}
    new = qmodule_class(layer, choice.mode).from_float(layer, config, **extra)
    summary.add(name, kind, "quantized", _detail(new, choice.mode, config), before, module_bytes(new))
    set_submodule(model, name, _with_relu(new, relu, relu_max))


def _convert_matmul(model: nn.Module, name: str, config: QuantConfig, ranges: _Ranges,
                    summary: QuantizationSummary, keep_float: Mapping[str, str] | None = None) -> None:
    observed: ObservedMatMul = model.get_submodule(name)
    choice = config.choice(name)
    if name in (keep_float or {}):
        set_submodule(model, name, FloatMatMul(observed.alpha))
        summary.add(name, "matmul", "float", keep_float[name])  # type: ignore[index]
        return
    if excluded(name, config.exclude) or choice.mode == "fp32":
        set_submodule(model, name, FloatMatMul(observed.alpha))
        summary.add(name, "matmul", "float", "excluded" if choice.mode != "fp32" else "kept fp32 by a per-layer "
                    "override")
        return
    if choice.mode != "static" or not (observed.a_observer.has_data and observed.b_observer.has_data):
        set_submodule(model, name, FloatMatMul(observed.alpha))
        return
    a_q, b_q = ranges.of(observed.a_observer, name), ranges.of(observed.b_observer, name)
    set_submodule(model, name, QuantizedMatMul(a_q, b_q, observed.alpha))
    scaled = "" if observed.alpha == 1.0 else f", x{observed.alpha:.4g} folded into the output scale"
    summary.add(name, "matmul", "quantized", f"static a:{config.activation} x a:{config.activation} "
                f"({choice.observer.name}), float output{scaled}")


def _convert_add(model: nn.Module, name: str, config: QuantConfig, ranges: _Ranges,
                 summary: QuantizationSummary) -> None:
    observed: ObservedAdd = model.get_submodule(name)
    observers = (observed.a_observer, observed.b_observer, observed.output_observer)
    choice = config.choice(name)
    if choice.mode != "static" or not all(o.has_data for o in observers):  # float, unreached, or shape arithmetic
        set_submodule(model, name, FloatAdd(observed.relu))
        if choice.mode == "fp32":
            summary.add(name, "add", "float", "kept fp32 by a per-layer override")
        return
    a_q, b_q, y_q = (ranges.of(o, name) for o in observers)
    set_submodule(model, name, QuantizedAdd(a_q, b_q, y_q, relu=observed.relu))
    detail = f"static a:{config.activation} ({choice.observer.name})" + (", relu fused" if observed.relu else "")
    summary.add(name, "add", "quantized", detail)


def convert_graph_op(model: nn.Module, name: str, config: QuantConfig, ranges: _Ranges,
                     summary: QuantizationSummary, keep_float: Mapping[str, str] | None = None) -> None:
    """Convert graph-mode op ``name`` (an ``ObservedAdd`` or an ``ObservedMatMul``) in place; a MatMul in
    ``keep_float`` stays float with that reason."""
    if isinstance(model.get_submodule(name), ObservedMatMul):
        _convert_matmul(model, name, config, ranges, summary, keep_float)
    else:
        _convert_add(model, name, config, ranges, summary)


def convert_prepared(prepared: Prepared, config: QuantConfig | None = None,
                     keep_float: Mapping[str, str] | None = None) -> nn.Module:
    """A quantized model from a calibrated ``prepared`` model, per ``config`` (default: the one it was prepared
    with). ``prepared`` is left as it was, so it can be converted again under other configs. ``keep_float`` maps
    layers to the reason they stay float whatever the config says (runtime-aware precision's choice)."""
    keep_float = keep_float or {}
    config = config or prepared.config
    rounded = prepared.rounded if config.adaround else {}
    if rounded and config.weight != prepared.config.weight:
        raise ValueError(f"the AdaRound codes were chosen for weights {prepared.config.weight}, not {config.weight}; "
                         "prepare and round with this config's weight spec")
    model = copy_model(prepared.model)
    if hasattr(prepared.model, "config") and not hasattr(model, "config"):  # a GraphModule's copy drops it
        model.config = prepared.model.config
    summary = copy.deepcopy(prepared.summary)
    summary.mode = config.mode
    static = {n for n in prepared.observed + prepared.adds if config.choice(n).mode == "static" and n not in keep_float}
    ranges = _Ranges(prepared, config, static, model)
    for name in prepared.targets:
        _convert_layer(model, name, config, ranges, summary, prepared.weight_params, keep_float, rounded)
    for name in prepared.adds:
        convert_graph_op(model, name, config, ranges, summary, keep_float)
    summary.clipped = list(ranges.clipping.values())
    if static and config.activation.torch_dtype == torch.int8:
        summary.notes.append("int8 activations: ONNX Runtime's x86 kernels are fastest with uint8 activations; "
                             "with int8 some layers may fall back to float Conv and adds stay float")
    if any(isinstance(m, DynamicQuantizedConv) for m in model.modules()):
        summary.notes.append(_dynamic_conv_note(config))
    summary.sort_by(model)
    if prepared.home is not None and isinstance(model, fx.GraphModule):
        model = graft(model, prepared.home)
        summary.notes.append(f"the result is a {type(model).__name__}, a subclass of the model's own "
                             f"{prepared.home[0].__name__} whose forward is the quantized graph")
    model.mixq_summary = summary
    model.mixq_config = config
    return mark_saveable(model)

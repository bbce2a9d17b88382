"""``mixq.quantize``: one entry point for static, dynamic, weight-only and float16 post-training quantization."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable

from torch import nn

from mixq.quant.batch_keys import warn_unknown_keys
from mixq.quant.calibration import Batch
from mixq.quant.conversion import convert_prepared
from mixq.quant.finiteness import check_finite
from mixq.quant.modules.observed import refuse_observed
from mixq.quant.planning import excluded, split_first
from mixq.quant.smoothquant import check_alpha, smooth
from mixq.quant.spec import (
    DEFAULT_ACTIVATION,
    WEIGHT_ONLY_BITS,
    LayerOverride,
    ObserverSpec,
    QuantConfig,
    QuantSpec,
    WeightMethod,
)
from mixq.quant.stages import calibrate, prepare
from mixq.quant.weight_only.calibrate import calibrate_weights

_WEIGHT_MODES = ("static", "dynamic", "weight_only")  # the modes that quantize weights to integers


def _refuse_unused(mode: str, observer: str | None, bits: int, group_size: int | None, per_channel: bool,
                   activation_dtype: str, overrides: tuple[LayerOverride, ...]) -> None:
    """Every option takes effect or is refused: name the first one no layer of this request would use."""
    modes = {mode} | {o.mode for o in overrides if isinstance(o, LayerOverride)}
    integer = modes & set(_WEIGHT_MODES)
    unused = []
    if observer is not None and "static" not in modes:
        unused.append((f"observer={observer!r}", "observers calibrate static layers; dynamic mode measures each "
                       "input at run time"))
    if bits != 8 and not integer:
        unused.append((f"bits={bits}", f"{mode} mode keeps float weights; bits applies to "
                       f"{'/'.join(_WEIGHT_MODES)}"))
    if group_size is not None and "weight_only" not in modes:
        unused.append((f"group_size={group_size}", "per-group scales exist for weight_only layers (MatMulNBits); "
                       "static and dynamic layers use per-channel scales"))
    if not per_channel and not integer - {"weight_only"}:
        unused.append(("per_channel=False", "it applies to static and dynamic layers (weight_only Linear "
                       "layers use per-row or group scales)"))
    if activation_dtype != "uint8" and "static" not in modes:
        unused.append((f"activation_dtype={activation_dtype!r}", "only static layers store activations "
                       "(dynamic ones quantize them to uint8, as DynamicQuantizeLinear does)"))
    if unused:
        option, why = unused[0]
        raise ValueError(f"{option} has no effect in {mode} mode: {why}; drop it or choose another mode")


def _refuse_unmatched(model: nn.Module, cfg: QuantConfig) -> None:
    """An ``exclude`` or override pattern that names no module of ``model`` would do nothing: refuse it (graph-mode
    adds, ``mixq_add_*``, only exist after tracing and are not checked)."""
    names = [n for n, _ in model.named_modules() if n]
    patterns = [("exclude", p) for p in cfg.exclude] + [("override", o.pattern) for o in cfg.overrides]
    for kind, pattern in patterns:
        if "mixq_add" in pattern or "mixq_matmul" in pattern or _matches_any(pattern, names):
            continue
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ValueError(f"{kind} pattern {pattern!r} matches no layer of {type(model).__name__} (its layers: "
                         f"{shown or 'none'}); fix the name or drop the pattern")


def _matches_any(pattern: str, names: list[str]) -> bool:
    """True when ``pattern`` matches at least one of ``names`` (as ``exclude`` would)."""
    return any(excluded(name, [pattern]) for name in names)


def make_config(mode: str, *, observer: str | None = None, bits: int = 8, group_size: int | None = None,
                per_channel: bool = True, activation_dtype: str = "uint8", reduce_range: bool = False,
                exclude: Iterable[str] = (), overrides: Iterable[LayerOverride] = (), symmetric: bool = True,
                method: str | WeightMethod = "rtn") -> QuantConfig:
    """Build a validated ``QuantConfig`` from ``quantize``'s keyword arguments; an option that no layer would use
    (``observer`` without static layers, ``bits``/``group_size`` in fp16 mode, ...) is refused, never ignored."""
    overrides = tuple(overrides)
    _refuse_unused(mode, observer, bits, group_size, per_channel, activation_dtype, overrides)
    if mode == "weight_only" and bits not in WEIGHT_ONLY_BITS:
        raise ValueError(f"weight_only runs as ONNX Runtime's MatMulNBits, which takes 2-, 4- or 8-bit weights "
                         f"(3-bit in its 4-bit layout); got bits={bits!r}")
    if not isinstance(method, (str, WeightMethod)):
        raise TypeError(f"method must be 'rtn', 'gptq', 'awq' or a WeightMethod, got {type(method).__name__}")
    method = WeightMethod(method) if isinstance(method, str) else method
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
    if mode == "weight_only" and bits < 8 and group_size is None and per_channel:
        granularity, group_size = "per_group", 128
    weight = QuantSpec("int8", bits=bits, symmetric=symmetric, granularity=granularity, group_size=group_size)
    if activation_dtype not in ("uint8", "int8"):
        raise ValueError(f"activation_dtype must be 'uint8' or 'int8', got {activation_dtype!r}")
    activation = DEFAULT_ACTIVATION if activation_dtype == "uint8" else QuantSpec(
        "int8", symmetric=False, granularity="per_tensor", narrow_range=False)
    if isinstance(exclude, str):
        raise TypeError(f"exclude must be a list of name patterns, e.g. exclude=[{exclude!r}]")
    return QuantConfig(mode, weight=weight, activation=activation, observer=ObserverSpec(observer or "minmax"),
                       exclude=tuple(exclude), overrides=overrides, method=method)


def quantize(
    model: nn.Module,
    mode: str = "static",
    *,
    calib_data: Iterable[Batch] | None = None,
    observer: str | None = None,
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
    overrides: Iterable[LayerOverride] = (),
    smoothquant: float | str | None = None,
    method: str | WeightMethod = "rtn",
    symmetric: bool = True,
) -> nn.Module:
    """Return a quantized copy of ``model`` (the original is never modified), with ``.mixq_summary`` attached.

    Modes: ``"static"`` (int8 weights and activations; needs ``calib_data``, an iterable of batches: tensors,
    tuples of positional tensors or dicts of keyword tensors), ``"dynamic"`` (int8 weights, activations quantized
    per call), ``"weight_only"`` (``bits=8`` per-channel, or ``bits`` 4, 3 or 2 with ``group_size``, default 128;
    ``symmetric=False`` adds zero points) and ``"fp16"`` (in modes without calibration the first ``calib_data``
    batch, if given, is only the probe for BatchNorm folding). Weight-only ``method`` is ``"rtn"`` (round to
    nearest, data-free), ``"gptq"`` or ``"awq"`` (both need ``calib_data`` and calibrate one decoder block at a
    time), or a ``WeightMethod`` with their options. An option that no layer would use is refused with a
    ``ValueError``, never ignored. ``reduce_range=True`` keeps int8 weights within 7 bits ([-63, 63]) so x86
    CPUs without VNNI, whose uint8 x int8 kernels add pairs of products in saturating 16-bit registers, cannot
    overflow (ONNX Runtime's own advice for such machines); it costs one bit of weight precision.

    Conv+BatchNorm(+ReLU) are folded first, from a probe of the real dataflow (the first calibration batch, or
    ``example_inputs`` in the other modes). Static mode then traces the model with ``torch.fx`` where it can, to
    quantize residual adds and share scales along the dataflow (see ``mixq.quant.graph``); models ``torch.fx``
    cannot trace (Hugging Face transformers) are captured with ``torch.export`` instead, which also runs
    attention's MatMuls as integer kernels and keeps Linear outputs float where no integer kernel reads them (the
    result is a ``torch.fx.GraphModule``; see ``mixq.quant.graph_export``).

    ``smoothquant`` (static and dynamic modes; needs ``calib_data``) applies SmoothQuant first: activation
    outliers move into the weights by per-channel scales folded into the preceding LayerNorm or Linear, so the
    float function and the exported graph's operators are unchanged (``mixq.quant.smoothquant``). A number in
    [0, 1] is the migration strength alpha (0.5 is the paper's choice for most models); ``"auto"`` picks alpha per
    smoothed layer group by int8 output error on the calibration data, the recommended setting. The default, None,
    leaves weights as they are: smoothing pays only on models with activation outliers (transformers), and a
    fixed alpha can hurt a model without them, which ``"auto"`` guards against by also trying no smoothing.

    ``overrides`` (``LayerOverride``) give single layers another mode, observer or ``"fp32"``, in the same pass:
    ``overrides=[LayerOverride("head", "fp16"), LayerOverride("block.*", "static", ObserverSpec("mse"))]``.

    Example::

        qmodel = mixq.quantize(model, "static", calib_data=batches, observer="percentile")
        print(qmodel.mixq_summary)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    refuse_observed(model, "quantize")
    check_finite(model, "quantize")
    if config is not None:
        given = [name for name, value, default in (
            ("observer", observer, None), ("bits", bits, 8), ("group_size", group_size, None),
            ("per_channel", per_channel, True), ("activation_dtype", activation_dtype, "uint8"),
            ("reduce_range", reduce_range, False), ("exclude", tuple(exclude), ()),
            ("overrides", tuple(overrides), ())) if value != default]
        if mode not in ("static", config.mode):
            given.insert(0, "mode")
        if given:
            raise ValueError(f"pass either config or the options it replaces, not both (got config and "
                             f"{', '.join(given)}); put them in the QuantConfig")
    cfg = config or make_config(mode, observer=observer, bits=bits, group_size=group_size,
                                per_channel=per_channel, activation_dtype=activation_dtype,
                                reduce_range=reduce_range, exclude=exclude, overrides=overrides, method=method,
                                symmetric=symmetric)
    _refuse_unmatched(model, cfg)
    alpha = check_alpha(smoothquant)
    if alpha is not None and cfg.mode not in ("static", "dynamic"):
        raise ValueError(f"smoothquant applies to the static and dynamic modes (int8 activations), not "
                         f"{cfg.mode!r}; drop smoothquant or change the mode")
    probe = example_inputs
    batches: Iterable[Batch] | None = None
    if cfg.needs_calibration or alpha is not None or cfg.method.needs_data:
        if calib_data is None:
            if cfg.method.needs_data:
                raise ValueError(f"method={cfg.method.name!r} needs calib_data: a few dozen representative token "
                                 "batches (or use method='rtn', which needs none)")
            what = "smoothquant" if alpha is not None else "static quantization"
            raise ValueError(f"{what} needs calib_data: a few hundred representative inputs as an iterable of "
                             "batches (or use mode='dynamic' without smoothquant, which needs none)")
        first, batches = split_first(calib_data)
        probe = first if probe is None or cfg.needs_calibration or cfg.method.needs_data else probe
        if cfg.method.needs_data:
            batches = list(itertools.islice(batches, max_calib_batches))  # read twice: observers and weights
    elif calib_data is not None and probe is None:  # no calibration: the first batch probes for BatchNorm folding
        probe, _ = split_first(calib_data)
    elif max_calib_batches is not None:
        raise ValueError(f"max_calib_batches has no effect in {cfg.mode} mode (only static layers are calibrated)")
    notes: list[str] = []
    if alpha is not None:
        if iter(batches) is batches or max_calib_batches is not None:  # read twice: statistics, calibration
            batches = list(itertools.islice(batches, max_calib_batches))  # type: ignore[arg-type]
        model, notes = smooth(model, alpha, cfg, first, batches, progress=progress)  # type: ignore[arg-type]
        if not notes:
            warnings.warn(f"smoothquant: {type(model).__name__} has no LayerNorm->Linear or Linear->Linear pair "
                          "whose smoothing can be folded exactly; quantizing without it", stacklevel=2)

    warn_unknown_keys(model, probe)
    prepared = prepare(model, cfg, probe)
    if prepared.observed:
        calibrate(prepared, batches, progress=progress, max_batches=max_calib_batches)  # type: ignore[arg-type]
    if cfg.method.needs_data:
        calibrate_weights(prepared, batches, progress=progress)  # type: ignore[arg-type]
    qmodel = convert_prepared(prepared)
    qmodel.mixq_summary.notes[:0] = notes
    if not qmodel.mixq_summary.quantized:
        warnings.warn(f"nothing in {type(model).__name__} could be quantized; returning it in float (its "
                      ".mixq_summary says why for each layer)", stacklevel=2)
    return qmodel

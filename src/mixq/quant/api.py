"""``mixq.quantize``: one entry point for static, dynamic, weight-only and float16 post-training quantization."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable
from typing import Any

from torch import nn

from mixq.quant.attention_logits import sharp_logit_layers
from mixq.quant.batch_keys import warn_unknown_keys
from mixq.quant.calibration import Batch
from mixq.quant.conversion import convert_prepared
from mixq.quant.finiteness import check_finite
from mixq.quant.modules.observed import refuse_observed
from mixq.quant.planning import excluded, split_first
from mixq.quant.runtime_precision import CostTable, runtime_float_layers
from mixq.quant.smoothquant import smooth
from mixq.quant.spec import OPTIONS, SMOOTH_LAYERNORM, QuantConfig
from mixq.quant.stages import calibrate, prepare, round_weights
from mixq.quant.weight_only.calibrate import calibrate_weights


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


def _refuse_runtime_without_data(cfg: QuantConfig, kernel_costs: object, calib_data: object,
                                 example_inputs: object) -> None:
    """Runtime-aware precision times layers at the shapes a probe batch gives them: refuse it without one, and a
    cost table without a runtime."""
    if kernel_costs is not None and not cfg.precision_by_runtime:
        raise ValueError("kernel_costs has no effect without runtime-aware precision: pass runtime= (e.g. 'ort') or "
                         "drop kernel_costs")
    if cfg.precision_by_runtime and calib_data is None and example_inputs is None:
        raise ValueError(f"runtime={cfg.runtime!r} times each layer at the shape it sees, which needs "
                         "example_inputs (or calib_data); pass one, or runtime_aware=False")


def _warn_clipped(clipped: list[str]) -> None:
    """One warning, a line per tensor, when calibrated ranges saturate a large share of their calibration values."""
    if clipped:
        warnings.warn(f"{len(clipped)} calibrated activation range(s) clip a large share of their calibration values, "
                      "which can cost much or all of the accuracy; compare with observer='minmax' (or exclude those "
                      "layers):\n  " + "\n  ".join(clipped), stacklevel=3)


def make_config(mode: str = "static", **options: Any) -> QuantConfig:
    """``QuantConfig.from_options``: a validated config from ``quantize``'s keyword options (``observer``,
    ``bits``, ``group_size``, ...); an option that no layer would use is refused, never ignored.

    Example: ``mixq.make_config("weight_only", bits=4, method="gptq")``.
    """
    return QuantConfig.from_options(mode, **options)


def _config(mode: str | QuantConfig | None, config: QuantConfig | None, options: dict[str, Any]) -> QuantConfig:
    """The one config of a ``quantize`` call: ``config`` (or a QuantConfig passed as ``mode``) as it is, else one
    built from ``mode`` and the keyword ``options``; options given beside a config are refused, never ignored."""
    unknown = [name for name in options if name not in OPTIONS]
    if unknown:
        raise TypeError(f"quantize() got an unknown option {unknown[0]!r}; its options are {', '.join(OPTIONS)}")
    if isinstance(mode, QuantConfig):
        if config is not None:
            raise ValueError("pass the QuantConfig once: as quantize's second argument or as config=, not both")
        mode, config = None, mode
    if config is None:
        return QuantConfig.from_options("static" if mode is None else mode, **options)
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config must be a QuantConfig, got {type(config).__name__}")
    given = (["mode"] if mode not in (None, config.mode) else []) + list(options)
    if given:
        raise ValueError(f"pass either config or the options it replaces, not both (got config and "
                         f"{', '.join(given)}); put {'it' if len(given) == 1 else 'them'} in the QuantConfig")
    return config


def _calibration_data(cfg: QuantConfig, calib_data: Iterable[Batch] | None, example_inputs: Batch | None,
                      max_calib_batches: int | None) -> tuple[Batch | None, Batch | None, Iterable[Batch] | None]:
    """``(probe, first, batches)``: the input BatchNorm folding is probed with, the first calibration batch and
    the calibration batches (a list where they are read more than once), as far as ``cfg`` reads data."""
    if not cfg.needs_data:
        if max_calib_batches is not None:
            raise ValueError(f"max_calib_batches has no effect in {cfg.mode} mode (only static layers are "
                             "calibrated)")
        if calib_data is not None and example_inputs is None:  # the first batch probes for BatchNorm folding
            return split_first(calib_data)[0], None, None
        return example_inputs, None, None
    if calib_data is None:
        if cfg.method.needs_data:
            raise ValueError(f"method={cfg.method.name!r} needs calib_data: a few dozen representative token "
                             "batches (or use method='rtn', which needs none)")
        what = "smoothquant" if cfg.smoothquant is not None else "static quantization"
        raise ValueError(f"{what} needs calib_data: a few hundred representative inputs as an iterable of "
                         "batches (or use mode='dynamic' without smoothquant, which needs none)")
    first, batches = split_first(calib_data)
    probe = first if example_inputs is None or cfg.needs_calibration or cfg.method.needs_data else example_inputs
    reread = cfg.method.needs_data or (cfg.smoothquant is not None  # observers and weights, or statistics first
                                       and (iter(batches) is batches or max_calib_batches is not None))
    if reread:
        batches = list(itertools.islice(batches, max_calib_batches))
    return probe, first, batches


def quantize(
    model: nn.Module,
    mode: str | QuantConfig | None = None,
    *,
    config: QuantConfig | None = None,
    calib_data: Iterable[Batch] | None = None,
    example_inputs: Batch | None = None,
    max_calib_batches: int | None = None,
    progress: bool = True,
    kernel_costs: CostTable | None = None,
    **options: Any,
) -> nn.Module:
    """Return a quantized copy of ``model`` (the original is never modified), with ``.mixq_summary`` attached.

    What to do is one ``QuantConfig``: ``quantize(model, config, calib_data=...)`` (or ``config=config``), or a
    mode and keyword options (``observer``, ``bits``, ``group_size``, ``per_channel``, ``activation_dtype``,
    ``reduce_range``, ``symmetric``, ``method``, ``exclude``, ``overrides``, ``smoothquant``, ``bias_correction``,
    ``adaround``), from which
    ``QuantConfig.from_options`` builds the same config; an option given beside a config is refused. The other
    arguments are the data: ``calib_data``, ``example_inputs``, ``max_calib_batches`` (read at most that many
    calibration batches) and ``progress``.

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
    attention's MatMuls as integer kernels and keeps Linear outputs float where no integer kernel reads them (see
    ``mixq.quant.graph_export``); for a Hugging Face task model that is its base model, so the head and its loss stay
    the model's Python and ``labels`` work (``mixq.quant.root_capture``). The quantized graph then runs under the
    captured module's own class (``Quantized<Class>``, a subclass keeping ``config`` and the class's methods;
    ``mixq.quant.graft``).

    Modules that compute with their own weights outside a registered layer class (a ``nn.Linear`` subclass that
    overrides ``forward``, a weight-standardised convolution, ``F.conv2d`` / ``x @ W`` on a module's parameters)
    are captured one by one with ``torch.export`` on the probe and quantized as what they compute, in every mode;
    without a probe they stay float with the reason (see ``mixq.quant.capture``).

    ``smoothquant`` (static and dynamic modes; needs ``calib_data``) applies SmoothQuant first: activation
    outliers move into the weights by per-channel scales folded into the preceding LayerNorm or Linear, so the
    float function and the exported graph's operators are unchanged (``mixq.quant.smoothquant``). A number in
    [0, 1] is the migration strength alpha (0.5 is the paper's choice for most models); ``"auto"`` picks alpha per
    smoothed layer group by int8 output error on the calibration data, also trying no smoothing. Where the scale
    cannot be folded into the producer (a post-LN LayerNorm that also feeds the residual add, a GELU output) and
    the consumers are static, they carry it in their quantization instead: int8 ``W * s`` and the input multiplied
    by ``1 / s`` before its grid (one Mul in the file, as NNCF's SmoothQuant inserts). Static mode's default,
    ``"layernorm"``, is ``"auto"`` on models where a LayerNorm feeds Linears (transformers, whose activations carry
    outlier channels: all-MiniLM-L6-v2's mean-pooled cosine to fp32 goes 0.993 -> 0.997) and nothing elsewhere;
    None turns it off; the other modes default to None.

    ``overrides`` (``LayerOverride``) give single layers another mode, observer or ``"fp32"``, in the same pass:
    ``overrides=[LayerOverride("head", "fp16"), LayerOverride("block.*", "static", ObserverSpec("mse"))]``.

    ``runtime`` (e.g. ``"ort"``) names the runtime the model is for: static and dynamic Conv/Linear layers whose
    int8 kernel runs slower there than float, timed on this machine at the shapes the probe batch gives them and
    cached, stay float, each with its measured ratio in the summary (``mixq.quant.runtime_precision``);
    ``runtime_aware=False`` forces int8. ``kernel_costs`` (``{kernel key: (float_ms, int8_ms)}`` or a
    ``KernelCosts``) replaces the measurements. Without ``runtime`` nothing is timed and the result depends on the
    config alone.

    Example::

        qmodel = mixq.quantize(model, "static", calib_data=batches, observer="percentile")
        print(qmodel.mixq_summary)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    refuse_observed(model, "quantize")
    check_finite(model, "quantize")
    cfg = _config(mode, config, options)
    _refuse_unmatched(model, cfg)
    _refuse_runtime_without_data(cfg, kernel_costs, calib_data, example_inputs)
    probe, first, batches = _calibration_data(cfg, calib_data, example_inputs, max_calib_batches)
    notes: list[str] = []
    if cfg.smoothquant is not None:
        model, notes = smooth(model, cfg.smoothquant, cfg, first, batches, progress=progress)  # type: ignore[arg-type]
        if not notes and cfg.smoothquant != SMOOTH_LAYERNORM:
            warnings.warn(f"smoothquant: {type(model).__name__} has no LayerNorm->Linear or Linear->Linear pair "
                          "whose smoothing can be folded exactly; quantizing without it", stacklevel=2)

    warn_unknown_keys(model, probe)
    prepared = prepare(model, cfg, probe)
    if prepared.observed:
        calibrate(prepared, batches, progress=progress, max_batches=max_calib_batches)  # type: ignore[arg-type]
        if cfg.adaround:
            round_weights(prepared, progress=progress)
    if cfg.method.needs_data:
        calibrate_weights(prepared, batches, progress=progress)  # type: ignore[arg-type]
    sharp = sharp_logit_layers(prepared)
    keep_float, runtime_notes = runtime_float_layers(prepared, cfg, kernel_costs, example=probe, kept=sharp)
    keep_float = {**sharp, **keep_float}
    qmodel = convert_prepared(prepared, keep_float=keep_float)
    qmodel.mixq_summary.notes[:0] = notes + runtime_notes
    _warn_clipped(qmodel.mixq_summary.clipped)
    if not qmodel.mixq_summary.quantized:
        warnings.warn(f"nothing in {type(model).__name__} could be quantized; returning it in float (its "
                      ".mixq_summary says why for each layer)", stacklevel=2)
    return qmodel

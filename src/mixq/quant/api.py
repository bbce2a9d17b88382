"""``mixq.quantize``: one entry point for static, dynamic, weight-only and float16 post-training quantization."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

from torch import nn

from mixq.quant.calibration import Batch
from mixq.quant.conversion import convert_prepared
from mixq.quant.modules.observed import refuse_observed
from mixq.quant.planning import split_first
from mixq.quant.spec import DEFAULT_ACTIVATION, LayerOverride, ObserverSpec, QuantConfig, QuantSpec
from mixq.quant.stages import calibrate, prepare


def make_config(mode: str, *, observer: str = "minmax", bits: int = 8, group_size: int | None = None,
                per_channel: bool = True, activation_dtype: str = "uint8", reduce_range: bool = False,
                exclude: Iterable[str] = (), overrides: Iterable[LayerOverride] = ()) -> QuantConfig:
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
                       exclude=tuple(exclude), overrides=tuple(overrides))


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
    overrides: Iterable[LayerOverride] = (),
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

    ``overrides`` (``LayerOverride``) give single layers another mode, observer or ``"fp32"``, in the same pass:
    ``overrides=[LayerOverride("head", "fp16"), LayerOverride("block.*", "static", ObserverSpec("mse"))]``.

    Example::

        qmodel = mixq.quantize(model, "static", calib_data=batches, observer="percentile")
        print(qmodel.mixq_summary)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    refuse_observed(model, "quantize")
    cfg = config or make_config(mode, observer=observer, bits=bits, group_size=group_size,
                                per_channel=per_channel, activation_dtype=activation_dtype,
                                reduce_range=reduce_range, exclude=exclude, overrides=overrides)
    probe = example_inputs
    batches: Iterable[Batch] | None = None
    if cfg.needs_calibration:
        if calib_data is None:
            raise ValueError("static quantization needs calib_data: a few hundred representative inputs as an "
                             "iterable of batches (or use mode='dynamic', which needs none)")
        probe, batches = split_first(calib_data)

    prepared = prepare(model, cfg, probe)
    if prepared.observed:
        calibrate(prepared, batches, progress=progress, max_batches=max_calib_batches)  # type: ignore[arg-type]
    qmodel = convert_prepared(prepared)
    if not qmodel.mixq_summary.quantized:
        warnings.warn(f"nothing in {type(model).__name__} could be quantized (no Linear/Conv1d/Conv2d layers "
                      "left after exclusions); returning it in float", stacklevel=2)
    return qmodel

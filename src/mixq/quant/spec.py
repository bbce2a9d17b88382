"""Frozen, self-validating specifications of *how* to quantize: a tensor (``QuantSpec``), a model (``QuantConfig``).

Specs are plain data: they serialise to a dict (and JSON) and back, print readably, and hold no functions. The
mechanisms (observers, quantized modules, exporter) are built from them.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from mixq.quant.primitives import qrange

if TYPE_CHECKING:
    from mixq.export.backend import Runtime

MODES = ("static", "dynamic", "weight_only", "fp16")
LAYER_MODES = (*MODES, "fp32")  # what a per-layer override may ask for; "fp32" keeps the layer float
GRANULARITIES = ("per_tensor", "per_channel", "per_group")
WEIGHT_ONLY_BITS = (2, 3, 4, 8)  # MatMulNBits runs 2, 4 and 8; 3-bit codes ride in its 4-bit layout
_DTYPES = {"int8": torch.int8, "uint8": torch.uint8}


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized.

    Example: ``QuantSpec("int8", granularity="per_channel")`` (the default weight spec) or
    ``QuantSpec("uint8", symmetric=False, granularity="per_tensor")`` (the default activation spec).
    """

    dtype: str = "int8"
    bits: int = 8
    symmetric: bool = True
    granularity: str = "per_channel"
    group_size: int | None = None
    narrow_range: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be between 2 and 8 (weights below 8 bits are stored as int8), got "
                             f"{self.bits!r}")
        if self.granularity == "per_group":
            if self.group_size is None or self.group_size < 16 or self.group_size & (self.group_size - 1):
                raise ValueError(
                    f"per_group quantization needs group_size, a power of two >= 16 (got {self.group_size}); "
                    "try group_size=32 or 128"
                )
        elif self.group_size is not None:
            raise ValueError("group_size is only meaningful with granularity='per_group'")

    @property
    def torch_dtype(self) -> torch.dtype:
        """The storage dtype, ``torch.int8`` or ``torch.uint8``."""
        return _DTYPES[self.dtype]

    @property
    def qmin(self) -> int:
        return qrange(self.torch_dtype, self.bits, self.narrow_range and self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.torch_dtype, self.bits, self.narrow_range and self.symmetric)[1]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantSpec:
        return cls(**data)

    def __str__(self) -> str:
        sym = "sym" if self.symmetric else "affine"
        gran = f"group{self.group_size}" if self.granularity == "per_group" else self.granularity
        return f"{self.dtype}/{self.bits}b {sym} {gran}"


DEFAULT_WEIGHT = QuantSpec("int8", granularity="per_channel")
DEFAULT_ACTIVATION = QuantSpec("uint8", symmetric=False, granularity="per_tensor", narrow_range=False)


@dataclass(frozen=True)
class ObserverSpec:
    """Which calibration observer estimates activation ranges, with its knobs.

    ``percentile`` clips each side of the distribution at that percentile (default 99.99: the 0.01 % most extreme
    values below and above are clipped); ``bins`` is the histogram resolution shared by
    the percentile, MSE and entropy observers; ``averaging_constant`` is the moving-average weight.
    """

    name: str = "minmax"
    percentile: float = 99.99
    bins: int = 2048
    averaging_constant: float = 0.01

    def __post_init__(self) -> None:
        from mixq.quant.observers import observer_class  # the registry imports this module

        observer_class(self.name)  # raises for an unknown name, listing the registered ones
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.bins < 16:
            raise ValueError(f"bins must be >= 16, got {self.bins}")
        if not 0.0 < self.averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must be in (0, 1], got {self.averaging_constant}")


@dataclass(frozen=True)
class WeightMethod:
    """How weight-only layers choose their integer weights.

    ``"rtn"`` rounds to nearest (data-free, the default); ``"gptq"`` (Frantar et al.) corrects rounding errors with
    the inverse Hessian of each layer's calibration inputs (``damp``: diagonal damping as a fraction of the mean
    diagonal; ``act_order``: quantize columns in order of decreasing activation energy, with group parameters fixed
    up front so groups stay the exported blocks); ``"awq"`` (Lin et al.) searches per-input-channel scales on
    calibration activations and folds them into the preceding norm or linear layer (``clip``: also search a
    clipping range per group). ``blockwise`` calibrates one decoder block at a time, feeding block k+1 the
    quantized outputs of block k; ``False`` gathers every layer's statistics in one float forward pass.

    Example: ``WeightMethod("gptq", act_order=True)``, ``WeightMethod("awq", clip=False)``.
    """

    name: str = "rtn"
    damp: float = 0.01
    act_order: bool = False
    clip: bool = True
    blockwise: bool = True

    def __post_init__(self) -> None:
        from mixq.quant.weight_only.methods import method_class  # the registry imports this module

        options = method_class(self.name).options  # raises for an unknown name, listing the registered ones
        for f in dataclasses.fields(self)[1:]:
            if getattr(self, f.name) != f.default and f.name not in options:
                owners = "/".join(n.upper() for n in _methods_reading(f.name))
                article = "an" if owners.startswith(("A", "E", "I", "O", "U")) else "a"
                raise ValueError(f"{f.name} is {article} {owners} option; method {self.name!r} does not use it")
        if not 0.0 < self.damp < 1.0:
            raise ValueError(f"damp must be in (0, 1), got {self.damp}")

    @property
    def needs_data(self) -> bool:
        """True when the method calibrates on data (GPTQ, AWQ); round to nearest needs none."""
        from mixq.quant.weight_only.methods import method_class

        return method_class(self.name).needs_data

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        extras = {"gptq": [f"damp={self.damp}"] + (["act_order"] if self.act_order else []),
                  "awq": [] if self.clip else ["no clip"]}.get(self.name, [])
        if self.needs_data and not self.blockwise:
            extras.append("whole-model calibration")
        return self.name + (f"({', '.join(extras)})" if extras else "")


def _methods_reading(option: str) -> list[str]:
    """The registered weight-only methods that read ``option``."""
    from mixq.quant.weight_only.methods import method_class, method_names

    return [name for name in method_names() if option in method_class(name).options]


@dataclass(frozen=True)
class LayerOverride:
    """A per-layer precision: the layers whose names match ``pattern`` use ``mode`` (and ``observer``).

    ``pattern`` is an fnmatch pattern over module names (``"head"``, ``"encoder.*.output"``); a pattern that names a
    parent covers its children. ``mode`` is a quantization mode or ``"fp32"`` (the layer stays float; BatchNorm is
    still folded into it). ``observer`` (static mode only) replaces the config's observer for the activations the
    layer produces, and for its input unless graph mode shares that input's scale with a quantized producer.
    Graph-mode residual adds are named ``mixq_add_0``, ``mixq_add_1``, ... and accept ``"static"`` or ``"fp32"``.

    Example: ``LayerOverride("fc2", "fp16")``, ``LayerOverride("block.conv1", "static", ObserverSpec("mse"))``.
    """

    pattern: str
    mode: str
    observer: ObserverSpec | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise TypeError(f"an override's pattern must be a non-empty module name pattern, got {self.pattern!r}")
        if self.mode not in LAYER_MODES:
            raise ValueError(f"unknown layer mode {self.mode!r} for {self.pattern!r}; choose one of "
                             f"{', '.join(LAYER_MODES)}")
        if self.observer is not None and self.mode != "static":
            raise ValueError(f"an observer only applies to static layers; {self.pattern!r} asks for "
                             f"{self.mode!r} with observer {self.observer.name!r}")

    def matches(self, name: str) -> bool:
        """True when ``name`` (or a parent of it) matches ``pattern``."""
        return fnmatch.fnmatchcase(name, self.pattern) or fnmatch.fnmatchcase(name, self.pattern + ".*")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerOverride:
        observer = data.get("observer")
        return cls(data["pattern"], data["mode"], None if observer is None else ObserverSpec(**observer))

    def __str__(self) -> str:
        return f"{self.pattern}={self.mode}" + (f"({self.observer.name})" if self.observer else "")


@dataclass(frozen=True)
class LayerChoice:
    """What one layer resolves to under a config: its mode and, for static layers, its observer."""

    mode: str
    observer: ObserverSpec



_INT8_MODES = frozenset({"static", "dynamic"})  # integer weights and int8 activations
_INTEGER_WEIGHT_MODES = _INT8_MODES | {"weight_only"}
_ACTIVATIONS = {"uint8": DEFAULT_ACTIVATION,
                "int8": QuantSpec("int8", symmetric=False, granularity="per_tensor", narrow_range=False)}


def _changed(spec: QuantSpec, default: QuantSpec, prefix: str = "") -> str:
    """The fields in which ``spec`` differs from ``default``, written as the options that set them."""
    parts = []
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if value == getattr(default, f.name) or (f.name == "granularity" and value == "per_group"):
            continue  # per-group shows as its group_size
        if not prefix and f.name == "granularity" and value == "per_tensor":
            parts.append("per_channel=False")
        else:
            parts.append(f"{prefix}{f.name}={value!r}")
    return ", ".join(parts)


# the static default: SmoothQuant with per-group alpha ("auto") on models where a LayerNorm feeds Linears
# (transformers, whose activations carry outlier channels); nothing on other models, and off in other modes
SMOOTH_LAYERNORM = "layernorm"


def _alpha(alpha: object) -> float | str | None:
    """A valid ``smoothquant`` value: a number in [0, 1] (as float), ``"auto"``, ``"layernorm"`` or None."""
    if alpha is None or alpha in ("auto", SMOOTH_LAYERNORM):
        return alpha  # type: ignore[return-value]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"smoothquant must be a number in [0, 1], 'auto', 'layernorm' or None, got {alpha!r}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"smoothquant alpha must be in [0, 1] (0.5 balances activations and weights; larger moves "
                         f"more of the outliers into the weights), got {alpha}")
    return float(alpha)


@dataclass(frozen=True)
class QuantConfig:
    """Everything ``mixq.quantize`` needs to know, validated here, once: an option that no layer would use is
    refused with a ``ValueError`` naming it, never ignored.

    ``observer`` (None: min-max) calibrates static layers; a config without static layers keeps None.
    ``overrides`` give layers their own precision; when several match a layer, the last one wins. ``exclude``
    wins over ``overrides``: excluded layers are not planned at all. ``smoothquant`` (static and dynamic modes) is
    SmoothQuant's migration strength alpha in [0, 1], ``"auto"``, ``"layernorm"`` (``"auto"`` on the outlier groups
    where a LayerNorm feeds Linears, on every group for LiteRT; the default of static mode with float outputs, None
    elsewhere) or None (off; see
    ``mixq.quantize``). ``runtime`` names the
    runtime the model is quantized for (``"ort"``); with it, static and dynamic layers whose int8 kernel is slower
    than float there stay float (``mixq.quant.runtime_precision``) unless ``runtime_aware=False``. ``float_outputs``
    (static graph mode through torch.export): True leaves a Linear's output float where no integer kernel reads it
    (ONNX Runtime's MatMulIntegerToFloat); False rounds every static Linear's output to its calibrated int8 grid,
    which LiteRT's int8 FULLY_CONNECTED needs (``mixq quantize --format tflite`` sets it). ``bias_correction``
    (static): a static layer's bias absorbs the mean output shift its weight rounding causes on the calibration
    inputs, ``(W_q - W) . E[x]`` (``mixq.quant.bias_correction``; the float model is unchanged): None (default) on
    convolutions, True on every Conv/Linear, False on none.
    ``adaround`` (static): each static Conv/Linear rounds its weights up or down by AdaRound, minimising its output
    error on the calibration inputs instead of rounding to nearest (``mixq.quant.adaround``; same scales, so the
    exported file has the same operators); it costs an optimisation per layer after calibration.
    ``QuantConfig.from_options`` builds one from ``quantize``'s keyword options.
    Example: ``QuantConfig("static", observer=ObserverSpec("percentile"), exclude=("head",),
    overrides=(LayerOverride("fc2", "fp16"),))``.
    """

    mode: str
    weight: QuantSpec = DEFAULT_WEIGHT
    activation: QuantSpec = DEFAULT_ACTIVATION
    observer: ObserverSpec | None = None
    exclude: tuple[str, ...] = ()
    fold_batchnorm: bool = True
    overrides: tuple[LayerOverride, ...] = ()
    method: WeightMethod = field(default_factory=WeightMethod)
    smoothquant: float | str | None = SMOOTH_LAYERNORM
    runtime: str | None = None
    runtime_aware: bool = True
    float_outputs: bool = True
    bias_correction: bool | None = None
    adaround: bool = False

    def __post_init__(self) -> None:
        self._check_types()
        modes = self.modes
        self._refuse_unused(modes)
        self._check_weight(modes)
        if "static" in modes and self.activation.bits != 8:
            raise ValueError("static mode quantizes activations to 8 bits")
        if self.observer is None and "static" in modes:
            object.__setattr__(self, "observer", ObserverSpec())  # static layers calibrate with min-max

    def _check_types(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if isinstance(self.exclude, str):
            raise TypeError(f"exclude must be a list of name patterns, e.g. exclude=[{self.exclude!r}]")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if isinstance(self.overrides, list):
            object.__setattr__(self, "overrides", tuple(self.overrides))
        if not isinstance(self.overrides, tuple) or not all(isinstance(o, LayerOverride) for o in self.overrides):
            raise TypeError("overrides must be a tuple of LayerOverride, e.g. (LayerOverride('head', 'fp32'),)")
        if not isinstance(self.method, WeightMethod):
            from mixq.quant.weight_only.methods import method_names

            raise TypeError(f"method must be one of {', '.join(map(repr, method_names()))} or a WeightMethod, got "
                            f"{type(self.method).__name__}")
        if self.observer is not None and not isinstance(self.observer, ObserverSpec):
            raise TypeError(f"observer must be an ObserverSpec, got {type(self.observer).__name__}")
        object.__setattr__(self, "smoothquant", _alpha(self.smoothquant))
        if self.smoothquant == SMOOTH_LAYERNORM and (self.mode != "static" or not self.float_outputs):
            object.__setattr__(self, "smoothquant", None)  # the default applies to static mode's ONNX files
        if self.bias_correction is not None and not isinstance(self.bias_correction, bool):
            raise TypeError(f"bias_correction must be None (convolutions, the default), True or False, got "
                            f"{self.bias_correction!r}")
        if not isinstance(self.adaround, bool):
            raise TypeError(f"adaround must be True or False, got {self.adaround!r}")
        if not isinstance(self.runtime_aware, bool):
            raise TypeError(f"runtime_aware must be True or False, got {self.runtime_aware!r}")
        if self.runtime is not None:
            from mixq.export.backend import get_runtime  # the registry: imports no runtime library

            if not isinstance(self.runtime, str):
                raise TypeError(f"runtime must be a runtime name such as 'ort', got {type(self.runtime).__name__}")
            get_runtime(self.runtime)  # raises for an unknown name, listing the registered ones

    def _where(self, modes: frozenset[str]) -> str:
        """Where an option is out of place: the config's mode, or its overrides of ``modes``."""
        return f"{self.mode} mode" if self.mode in modes else f"the {'/'.join(sorted(modes))} overrides"

    def _refuse_unused(self, modes: frozenset[str]) -> None:
        """Name the first option that no layer of this config would use."""
        why = "; drop it or choose another mode"
        if self.observer is not None and "static" not in modes:
            raise ValueError(f"observer={self.observer.name!r} has no effect in {self.mode} mode: observers calibrate "
                             f"static layers (dynamic ones measure each input at run time){why}")
        if self.weight != DEFAULT_WEIGHT and not modes & _INTEGER_WEIGHT_MODES:
            raise ValueError(f"{_changed(self.weight, DEFAULT_WEIGHT)} has no effect in {self.mode} mode: it keeps "
                             f"float weights; weight options apply to static/dynamic/weight_only layers{why}")
        if self.activation != DEFAULT_ACTIVATION and "static" not in modes:
            raise ValueError(f"{_changed(self.activation, DEFAULT_ACTIVATION, 'activation_')} has no effect in "
                             f"{self.mode} mode: only static layers store activations (dynamic ones quantize them "
                             f"to uint8, as DynamicQuantizeLinear does){why}")
        if self.method != WeightMethod() and "weight_only" not in modes:
            raise ValueError(f"method={self.method.name!r} has no effect in {self.mode} mode: it chooses weight_only "
                             "weights; use mode='weight_only' or drop it")
        runtime = self.target_runtime()
        if runtime is not None and not any(runtime.affects(m) for m in modes):
            from mixq.export.backend import runtimes

            rows = ", ".join(r.name for r in runtimes() if r.affects("weight_only"))
            raise ValueError(f"runtime={self.runtime!r} has no effect in {self.mode} mode: runtime-aware precision "
                             "chooses between int8 and float for static and dynamic layers, and only a runtime whose "
                             f"integer-weight kernels round activations per row ({rows}) changes weight_only layers; "
                             "drop it")
        if not self.runtime_aware and self.runtime is None:
            raise ValueError("runtime_aware=False has no effect without a runtime: precision is only runtime-aware "
                             "when runtime= names one (e.g. runtime='ort'); drop it")
        if self.bias_correction and "static" not in modes:
            raise ValueError(f"bias_correction=True has no effect in {self.mode} mode: it corrects static layers' "
                             "biases from calibration means; drop it or choose mode='static'")
        if self.adaround and "static" not in modes:
            raise ValueError(f"adaround=True has no effect in {self.mode} mode: it rounds static layers' weights "
                             "from calibration inputs; drop it or choose mode='static' (weight_only has "
                             "method='gptq')")
        if not self.float_outputs and "static" not in modes:
            raise ValueError(f"float_outputs=False has no effect in {self.mode} mode: it gives static layers int8 "
                             "outputs; drop it or choose mode='static'")
        if self.smoothquant is not None and self.mode not in _INT8_MODES:
            raise ValueError(f"smoothquant applies to the static and dynamic modes (int8 activations), not "
                             f"{self.mode!r}; drop smoothquant or change the mode")

    def _check_weight(self, modes: frozenset[str]) -> None:
        weight = self.weight
        if weight.torch_dtype != torch.int8:
            raise ValueError("weights are stored as int8; set the weight dtype to 'int8'")
        if weight.granularity == "per_group" and modes & _INT8_MODES:
            raise ValueError(f"group_size={weight.group_size} has no effect in {self._where(_INT8_MODES)}: per-group "
                             "weight scales exist for weight_only layers (MatMulNBits); static and dynamic layers use "
                             "per-channel or per-tensor scales")
        if not weight.symmetric and modes & _INT8_MODES:
            raise ValueError("asymmetric weights (zero points) are a weight_only option; static and dynamic "
                             "weights are symmetric: set symmetric=True")
        if "weight_only" in modes and weight.bits not in WEIGHT_ONLY_BITS:
            raise ValueError(f"weight_only runs as ONNX Runtime's MatMulNBits, which takes 2-, 4- or 8-bit weights "
                             f"(3-bit in its 4-bit layout); got bits={weight.bits}")
        if weight.granularity == "per_tensor" and "weight_only" in modes:
            raise ValueError(f"per_channel=False has no effect in {self._where(frozenset({'weight_only'}))}: "
                             "weight_only layers use per-row or per-group scales; per-tensor weight scales apply "
                             "to static and dynamic layers")

    @classmethod
    def from_options(cls, mode: str = "static", *, observer: str | None = None, bits: int = 8,
                     group_size: int | None = None, per_channel: bool = True, activation_dtype: str = "uint8",
                     reduce_range: bool = False, symmetric: bool = True, method: str | WeightMethod = "rtn",
                     exclude: Iterable[str] = (), overrides: Iterable[LayerOverride] = (),
                     smoothquant: float | str | None = SMOOTH_LAYERNORM, runtime: str | None = None,
                     runtime_aware: bool = True, float_outputs: bool = True,
                     bias_correction: bool | None = None, adaround: bool = False) -> QuantConfig:
        """Build a config from ``mixq.quantize``'s keyword options; the config's own validation refuses an option
        that no layer would use (``observer`` without static layers, ``bits`` in fp16 mode, ...).

        ``bits`` (2 to 8) and ``symmetric`` shape the weights; weight_only below 8 bits gets ``group_size`` 128
        unless given; ``per_channel=False`` gives static and dynamic layers one weight scale per tensor;
        ``reduce_range=True`` keeps 8-bit static/dynamic weights within 7 bits; ``activation_dtype`` is static
        mode's ``"uint8"`` (default) or ``"int8"``; ``runtime``/``runtime_aware``: runtime-aware precision;
        ``float_outputs=False`` gives every static Linear an int8 output; ``bias_correction`` corrects static
        layers' biases for the mean shift of weight rounding (None: convolutions; True: Linear too),
        ``adaround=True`` rounds their weights by AdaRound (see ``QuantConfig``).
        Example: ``QuantConfig.from_options("weight_only", bits=4)``.
        """
        if reduce_range:
            if mode not in _INT8_MODES or bits != 8:
                raise ValueError("reduce_range applies to 8-bit static and dynamic modes (it keeps weights to 7 bits)")
            bits = 7
        if mode == "weight_only" and isinstance(bits, int) and bits < 8 and group_size is None and per_channel:
            group_size = 128  # MatMulNBits' usual block
        granularity = "per_group" if group_size is not None else "per_channel" if per_channel else "per_tensor"
        weight = QuantSpec("int8", bits=bits, symmetric=symmetric, granularity=granularity, group_size=group_size)
        if activation_dtype not in _ACTIVATIONS:
            raise ValueError(f"activation_dtype must be 'uint8' or 'int8', got {activation_dtype!r}")
        return cls(mode, weight=weight, activation=_ACTIVATIONS[activation_dtype],
                   observer=None if observer is None else ObserverSpec(observer), exclude=exclude,  # type: ignore
                   overrides=tuple(overrides), method=WeightMethod(method) if isinstance(method, str) else method,
                   smoothquant=smoothquant, runtime=runtime, runtime_aware=runtime_aware,
                   float_outputs=float_outputs, bias_correction=bias_correction, adaround=adaround)

    @property
    def modes(self) -> frozenset[str]:
        """The config's mode and every mode its overrides ask for."""
        return frozenset({self.mode} | {o.mode for o in self.overrides})

    def choice(self, name: str) -> LayerChoice:
        """The mode and observer layer ``name`` gets: the last matching override's, else the config's."""
        for override in reversed(self.overrides):
            if override.matches(name):
                return LayerChoice(override.mode, override.observer or self.observer or ObserverSpec())
        return LayerChoice(self.mode, self.observer or ObserverSpec())

    def target_runtime(self) -> Runtime | None:
        """The registered runtime the model is quantized for (``runtime``), None without one."""
        if self.runtime is None:
            return None
        from mixq.export.backend import get_runtime  # the registry: imports no runtime library

        return get_runtime(self.runtime)

    @property
    def precision_by_runtime(self) -> bool:
        """Whether runtime-aware precision times this config's static and dynamic layers on ``runtime``."""
        return self.runtime is not None and self.runtime_aware and bool(self.modes & _INT8_MODES)

    @property
    def needs_calibration(self) -> bool:
        """True when any layer may be static (and so needs calibration data)."""
        return "static" in self.modes

    @property
    def needs_data(self) -> bool:
        """True when quantizing reads calibration data: static layers, SmoothQuant, or a calibrated method."""
        return self.needs_calibration or self.smoothquant is not None or self.method.needs_data

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        observer = data.get("observer")
        observer = None if observer is None else ObserverSpec(**observer)
        return cls(
            mode=data["mode"],
            weight=QuantSpec.from_dict(data["weight"]),
            activation=QuantSpec.from_dict(data["activation"]),
            # the default observer is what None means; files written before None existed store it in every mode
            observer=None if observer == ObserverSpec() else observer,
            exclude=tuple(data["exclude"]),
            fold_batchnorm=data["fold_batchnorm"],
            overrides=tuple(LayerOverride.from_dict(o) for o in data.get("overrides", ())),
            method=WeightMethod(**data.get("method", {})),
            smoothquant=data.get("smoothquant"),
            runtime=data.get("runtime"),
            runtime_aware=data.get("runtime_aware", True),
            float_outputs=data.get("float_outputs", True),
            bias_correction=data.get("bias_correction", False),
            adaround=data.get("adaround", False),
        )


OPTIONS = tuple(inspect.signature(QuantConfig.from_options).parameters)[1:]  # quantize's keyword options

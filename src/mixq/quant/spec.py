"""Frozen, self-validating specifications of *how* to quantize: a tensor (``QuantSpec``), a model (``QuantConfig``).

Specs are plain data: they serialise to a dict (and JSON) and back, print readably, and hold no functions. The
mechanisms (observers, quantized modules, exporter) are built from them.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from typing import Any

import torch

from mixq.quant.primitives import qrange

MODES = ("static", "dynamic", "weight_only", "fp16")
LAYER_MODES = (*MODES, "fp32")  # what a per-layer override may ask for; "fp32" keeps the layer float
GRANULARITIES = ("per_tensor", "per_channel", "per_group")
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
        if not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be between 2 and 8, got {self.bits}")
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


@dataclass(frozen=True)
class QuantConfig:
    """Everything ``mixq.quantize`` needs to know, validated up front.

    ``overrides`` give layers their own precision; when several match a layer, the last one wins. ``exclude``
    wins over ``overrides``: excluded layers are not planned at all.
    Example: ``QuantConfig("static", observer=ObserverSpec("percentile"), exclude=("head",),
    overrides=(LayerOverride("fc2", "fp16"),))``.
    """

    mode: str
    weight: QuantSpec = DEFAULT_WEIGHT
    activation: QuantSpec = DEFAULT_ACTIVATION
    observer: ObserverSpec = field(default_factory=ObserverSpec)
    exclude: tuple[str, ...] = ()
    fold_batchnorm: bool = True
    overrides: tuple[LayerOverride, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if not self.weight.symmetric:
            raise ValueError("weights are quantized symmetrically (zero point 0); set symmetric=True")
        if self.weight.torch_dtype != torch.int8:
            raise ValueError("weights are stored as int8; set the weight dtype to 'int8'")
        modes = {self.mode} | {o.mode for o in self.overrides if isinstance(o, LayerOverride)}
        if "weight_only" in modes and self.weight.bits not in (4, 8):
            raise ValueError(f"weight_only supports bits=4 or bits=8, got bits={self.weight.bits}")
        if "static" in modes and self.activation.bits != 8:
            raise ValueError("static mode quantizes activations to 8 bits")
        if isinstance(self.exclude, str):
            raise TypeError("exclude must be a list of name patterns, e.g. exclude=['head', 'encoder.*.output']")
        if isinstance(self.overrides, list):
            object.__setattr__(self, "overrides", tuple(self.overrides))
        bad = [o for o in self.overrides if not isinstance(o, LayerOverride)]
        if not isinstance(self.overrides, tuple) or bad:
            raise TypeError("overrides must be a tuple of LayerOverride, e.g. (LayerOverride('head', 'fp32'),)")

    def choice(self, name: str) -> LayerChoice:
        """The mode and observer layer ``name`` gets: the last matching override's, else the config's."""
        for override in reversed(self.overrides):
            if override.matches(name):
                return LayerChoice(override.mode, override.observer or self.observer)
        return LayerChoice(self.mode, self.observer)

    @property
    def needs_calibration(self) -> bool:
        """True when any layer may be static (and so needs calibration data)."""
        return self.mode == "static" or any(o.mode == "static" for o in self.overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        return cls(
            mode=data["mode"],
            weight=QuantSpec.from_dict(data["weight"]),
            activation=QuantSpec.from_dict(data["activation"]),
            observer=ObserverSpec(**data["observer"]),
            exclude=tuple(data["exclude"]),
            fold_batchnorm=data["fold_batchnorm"],
            overrides=tuple(LayerOverride.from_dict(o) for o in data.get("overrides", ())),
        )

"""The layer-kind registry: which float layers mixq quantizes, and which module each mode swaps in for them.

A quantized module registers itself once against the float types it replaces, as optimum-quanto's
``register_qmodule`` does; planning, conversion, QAT and autoquantize ask the registry and never name a layer class::

    @register_qmodule((nn.Conv1d, nn.Conv2d), "dynamic")
    class DynamicQuantizedConv(nn.Module):
        @classmethod
        def from_float(cls, layer, config): ...          # -> the quantized module

        @classmethod
        def refusal(cls, layer, config): ...             # optional: why this layer cannot run in this mode

Static-mode modules take the calibrated activation parameters too: ``from_float(layer, config, x_qparams,
y_qparams, relu=False, w_scale=None)``. A QAT layer class registers with ``register_qat_module``. A float type from
an optional package is registered by its import path with an *adapter* that rewrites it as a registered type
(transformers' GPT-2 ``Conv1D`` becomes the equivalent ``nn.Linear``), so it needs no quantized classes of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from mixq.quant.spec import MODES

T = TypeVar("T", bound=type)
FloatTypes = type | tuple[type, ...]


@dataclass
class LayerKind:
    """Everything mixq knows about one float layer type."""

    float_type: type
    modules: dict[str, type] = field(default_factory=dict)  # mode -> quantized module class
    qat: type | None = None
    check: Callable[[nn.Module], str | None] | None = None  # structural reason it cannot be quantized at all
    refusals: dict[str, str] = field(default_factory=dict)  # mode -> why no module exists for it


_KINDS: dict[type, LayerKind] = {}
_ADAPTERS: dict[str, Callable[[nn.Module], nn.Module]] = {}  # "package.module.Class" -> adapter


def _types(float_types: FloatTypes) -> tuple[type, ...]:
    return float_types if isinstance(float_types, tuple) else (float_types,)


def _kind(float_type: type) -> LayerKind:
    return _KINDS.setdefault(float_type, LayerKind(float_type))


def register_qmodule(float_types: FloatTypes, *modes: str) -> Callable[[T], T]:
    """Class decorator: the decorated module replaces ``float_types`` layers in each of ``modes``."""
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"register_qmodule needs modes from {MODES}, got {modes}")

    def decorate(cls: T) -> T:
        for float_type in _types(float_types):
            for mode in modes:
                _kind(float_type).modules[mode] = cls
        return cls

    return decorate


def register_qat_module(float_types: FloatTypes) -> Callable[[T], T]:
    """Class decorator: the decorated QAT layer trains ``float_types`` layers (``cls(layer, ...)``, see QAT)."""

    def decorate(cls: T) -> T:
        for float_type in _types(float_types):
            _kind(float_type).qat = cls
        return cls

    return decorate


def register_check(float_types: FloatTypes, check: Callable[[nn.Module], str | None]) -> None:
    """``check(layer)`` says why a layer of these types cannot be quantized in any mode (None when it can)."""
    for float_type in _types(float_types):
        _kind(float_type).check = check


def register_refusal(float_types: FloatTypes, mode: str, reason: str) -> None:
    """The reason reported when ``mode`` has no module for these types (instead of "no <mode> kernel")."""
    for float_type in _types(float_types):
        _kind(float_type).refusals[mode] = reason


def register_adapter(type_path: str, adapter: Callable[[nn.Module], nn.Module]) -> None:
    """Quantize layers whose class is ``type_path`` (``"package.module.Class"``) as ``adapter(layer)``, an
    equivalent module of a registered type. Keyed by path so the package is never imported by mixq itself."""
    _ADAPTERS[type_path] = adapter


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def adapter_of(module: nn.Module) -> Callable[[nn.Module], nn.Module] | None:
    """The adapter registered for ``module``'s class (or a base class), if any."""
    for cls in type(module).__mro__:
        if _path(cls) in _ADAPTERS:
            return _ADAPTERS[_path(cls)]
    return None


def adapt(module: nn.Module) -> nn.Module:
    """``module`` as a registered layer type: its adapter's result, or ``module`` itself."""
    adapter = adapter_of(module)
    return adapter(module) if adapter is not None else module


def adapt_in_place(model: nn.Module, names: list[str]) -> None:
    """Replace each named layer that has an adapter by its adapted form (done once, on the working copy)."""
    for name in names:
        module = model.get_submodule(name)
        if adapter_of(module) is not None:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, adapt(module))


def kind_name(layer: nn.Module) -> str:
    """The layer's class name as the user knows it (an adapted layer keeps its original name)."""
    return getattr(layer, "mixq_kind", type(layer).__name__)


_COMPUTE = ("forward", "_conv_forward")  # what a quantized module replaces; an override computes otherwise


def kind_of(module: nn.Module) -> LayerKind | None:
    """The registered kind of ``module``: its exact class, else the nearest registered base class, but only when the
    subclass computes what the base does (it overrides no ``forward``); a quantized copy of the base would silently
    drop what an overriding ``forward`` computes (a permute, weight standardisation, same-padding)."""
    for cls in type(module).__mro__:
        if cls in _KINDS:
            return _KINDS[cls] if overridden_compute(module, cls) is None else None
    return None


def overridden_compute(module: nn.Module, base: type) -> str | None:
    """The first compute method ``type(module)`` overrides below ``base`` (None when it inherits them all)."""
    return next((m for m in _COMPUTE if getattr(type(module), m, None) is not getattr(base, m, None)), None)


def registered_base(layer: nn.Module) -> type | None:
    """The nearest registered class in ``type(layer)``'s MRO (its own class first), if any."""
    return next((cls for cls in type(layer).__mro__ if cls in _KINDS), None)


def unregistered_reason(layer: nn.Module) -> str:
    """Why a layer with no registered kind stays float: its class overrides a registered base's forward, or no
    quantized kernel exists for it."""
    base = registered_base(layer)
    if base is not None:
        return (f"{kind_name(layer)} overrides {base.__name__}.{overridden_compute(layer, base)}: a quantized "
                f"{base.__name__} would drop what it computes")
    return f"no quantized kernel for {kind_name(layer)}"


def is_quantizable(module: nn.Module, qat: bool = False) -> bool:
    """Whether ``module`` is a layer kind mixq quantizes (with ``qat``: one QAT can train)."""
    if adapter_of(module) is not None:
        return True  # adapters turn layers into registered types that every mode and QAT handle
    kind = kind_of(module)
    return kind is not None and (not qat or kind.qat is not None)


def structural_refusal(layer: nn.Module) -> str | None:
    """Why ``layer`` cannot be quantized in any mode (e.g. an unsupported padding mode), or None."""
    kind = kind_of(layer)
    return kind.check(layer) if kind is not None and kind.check is not None else None


def qmodule_class(layer: nn.Module, mode: str) -> type | None:
    """The module class ``mode`` swaps in for ``layer`` (None when there is none)."""
    kind = kind_of(layer)
    return None if kind is None else kind.modules.get(mode)


def refusal(layer: nn.Module, mode: str, config: Any) -> str | None:
    """Why ``layer`` cannot run in ``mode`` under ``config``, or None when it can."""
    weight = getattr(layer, "weight", None)
    if weight is not None and hasattr(weight, "numel") and weight.numel() == 0:
        return "its weight has no elements (a zero-sized layer): nothing to quantize"
    kind = kind_of(layer)
    if kind is None:
        return unregistered_reason(layer)
    cls = kind.modules.get(mode)
    if cls is None:
        return kind.refusals.get(mode, f"no {mode} kernel for {type(layer).__name__}")
    check = getattr(cls, "refusal", None)
    return check(layer, config) if check is not None else None


def qat_class(layer: nn.Module) -> type | None:
    """The QAT layer class that trains ``layer`` (None when QAT leaves it float)."""
    kind = kind_of(layer)
    return None if kind is None else kind.qat


def quantized_classes(mode: str | None = None) -> tuple[type, ...]:
    """Every registered quantized module class (of ``mode`` only, when given)."""
    found = {cls for kind in _KINDS.values() for m, cls in kind.modules.items() if mode in (None, m)}
    return tuple(sorted(found, key=lambda c: c.__name__))

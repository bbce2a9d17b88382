"""The observer contract: ``forward(x)`` records statistics and returns ``x``; ``calculate_qparams()`` turns them
into ``(scale, zero_point)`` with the shared primitives. Statistics live in buffers so ``state_dict`` round-trips.

Observers register by name (``@register_observer("minmax")``); every list of observer names (``ObserverSpec``'s
validation, the CLI's choices, QAT's, autoquantize's) is derived from the registry, so a new observer is one file.
What an observer supports (per-channel ranges, streaming statistics, use by autoquantize and the observers
autoquantize falls back to after it) is declared on its class as ``capabilities`` (``ObserverCapabilities``);
``make_observer``, the conversion's ``derive_observer`` and ``mixq.auto`` read it instead of keeping lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import torch
from torch import nn

from mixq.quant.primitives import choose_qparams
from mixq.quant.spec import ObserverSpec, QuantSpec

_REGISTRY: dict[str, type[Observer]] = {}
ObserverT = TypeVar("ObserverT", bound="type[Observer]")


def register_observer(name: str) -> Callable[[ObserverT], ObserverT]:
    """Class decorator: make the observer available as ``ObserverSpec(name)``."""

    def decorate(cls: ObserverT) -> ObserverT:
        cls.registered_name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


STATISTICS = ("range", "histogram")


@dataclass(frozen=True)
class ObserverCapabilities:
    """What an observer class supports, declared once on the class (``Observer.capabilities``).

    ``statistics``: what it keeps, ``"range"`` (a min and a max, per tensor or per channel) or ``"histogram"`` (a
    per-tensor histogram plus the exact min and max); an observer can be derived from another's statistics when
    both keep histograms of the same bins, or when it keeps a range (every kind keeps a min and a max).
    ``per_channel``: whether it accepts ``axis`` (per-channel ranges, e.g. weights). ``streaming``: its ranges
    follow the batches as they come (QAT needs that) rather than being searched at the end. ``autoquant``: whether
    ``mixq.autoquantize``, which gathers histogram statistics once and derives every observer from them, may use
    it. ``ladder``: the observers autoquantize tries next for a layer, in order, when static int8 with this one is
    not accurate enough (outlier-robust ranges first).

    Example: ``observer_class("minmax").capabilities.ladder == ("percentile", "mse")``.
    """

    statistics: str
    per_channel: bool = True
    streaming: bool = True
    autoquant: bool = True
    ladder: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.statistics not in STATISTICS:
            raise ValueError(f"statistics must be one of {', '.join(STATISTICS)}, got {self.statistics!r}")
        if self.ladder and not self.autoquant:
            raise ValueError("an observer autoquantize may not use has no autoquantize ladder")


def observer_names(streaming: bool | None = None, autoquant: bool | None = None,
                   per_channel: bool | None = None) -> tuple[str, ...]:
    """Registered observer names, in registration order, filtered by their declared capabilities: with
    ``streaming=True`` those whose ranges follow batches as they come (which QAT needs), ``autoquant=True`` those
    ``mixq.autoquantize`` may use, ``per_channel=True`` those that accept per-channel ranges.

    Example: ``observer_names(per_channel=True) == ("minmax", "moving_average")``.
    """
    wanted = {"streaming": streaming, "autoquant": autoquant, "per_channel": per_channel}
    return tuple(n for n, c in _REGISTRY.items()
                 if all(v is None or getattr(c.capabilities, k) == v for k, v in wanted.items()))


def observer_class(name: str) -> type[Observer]:
    """The observer class registered as ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown observer {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


class NoDataError(RuntimeError):
    """Raised when quantization parameters are requested from an observer that never saw data."""


class Observer(nn.Module):
    """Base class: validates inputs, tracks whether data was seen, and derives qparams from a range.

    Subclasses implement ``_observe(x, lo, hi)`` (``x`` is detached float32, ``lo``/``hi`` its finite minimum and
    maximum, per tensor or per channel: ``batch_range``) and ``calculate_range()``.
    ``axis`` selects per-channel statistics (weights); ``None`` means per-tensor (activations).
    """

    registered_name = ""
    capabilities: ClassVar[ObserverCapabilities] = ObserverCapabilities("range")

    @classmethod
    def from_spec(cls, observer: ObserverSpec, spec: QuantSpec, axis: int | None = None, name: str = "") -> Observer:
        """Build from an ``ObserverSpec``; subclasses with knobs read theirs from it."""
        return cls(spec, axis=axis, name=name)

    def __init__(self, spec: QuantSpec, axis: int | None = None, name: str = "") -> None:
        super().__init__()
        self.spec = spec
        self.axis = axis
        self.name = name
        self.register_buffer("num_batches", torch.tensor(0, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        data = x.detach().to(torch.float32)
        if data.numel() == 0:
            return x
        lo, hi = self.batch_range(data)
        # a NaN anywhere in the tensor makes its min and max NaN, an inf makes one of them infinite: checking the
        # reduced range refuses every non-finite batch at the cost of a few elements, not a pass over the tensor
        # (one check, one host sync: calibration runs this on every observed tensor of every batch)
        if not bool(torch.isfinite(torch.stack((lo, hi))).all()):
            where = f" at {self.name!r}" if self.name else ""
            raise ValueError(
                f"non-finite values (NaN or inf) reached the observer{where}; check the calibration data "
                "and the float model's outputs on it"
            )
        self._observe(data, lo, hi)
        self.num_batches += 1
        return x

    def batch_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's ``(min, max)``: 0-d per tensor, 1-D along ``axis`` per channel (NaN where a NaN is)."""
        if self.axis is None:
            return torch.aminmax(x)
        if x.dim() == 1:
            return x, x
        return torch.aminmax(x.movedim(self.axis % x.dim(), 0).reshape(x.shape[self.axis], -1), dim=1)

    @property
    def has_data(self) -> bool:
        return bool(self.num_batches.item() > 0)

    def _observe(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Record a batch: ``x`` detached float32, ``(lo, hi)`` its finite ``batch_range``."""
        raise NotImplementedError

    def calculate_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(min, max)`` range to represent (0-d tensors, or 1-D per channel)."""
        raise NotImplementedError

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` for the observed data; raises ``NoDataError`` if nothing was observed."""
        if not self.has_data:
            where = f" {self.name!r}" if self.name else ""
            raise NoDataError(f"observer{where} saw no data: run calibration batches through the model first")
        lo, hi = self.calculate_range()
        spec = self.spec
        return choose_qparams(lo, hi, spec.torch_dtype, symmetric=spec.symmetric, bits=spec.bits,
                              narrow=spec.narrow_range and spec.symmetric)

    def clipped_share(self, scale: torch.Tensor, zero_point: torch.Tensor) -> float | None:
        """The share of the observed values that ``(scale, zero_point)`` saturates (beyond half a step past the
        grid's ends), or None when the statistics cannot tell (a range observer keeps no distribution)."""
        return None

    def extra_repr(self) -> str:
        return f"spec={self.spec}, axis={self.axis}, batches={int(self.num_batches)}"

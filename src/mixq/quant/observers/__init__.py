"""Calibration observers: each records statistics of a tensor and turns them into ``(scale, zero_point)``.

``minmax`` and ``moving_average`` work per tensor or per channel; the histogram-based ``percentile``, ``mse``
and ``entropy`` observers are per tensor only. Each registers itself by name (``register_observer``) and declares
what it supports as ``capabilities`` (``ObserverCapabilities``).
"""

from __future__ import annotations

from mixq.quant.observers.base import (
    NoDataError,
    Observer,
    ObserverCapabilities,
    observer_class,
    observer_names,
    register_observer,
)
from mixq.quant.observers.entropy import EntropyObserver
from mixq.quant.observers.minmax import MinMaxObserver
from mixq.quant.observers.moving_average import MovingAverageMinMaxObserver
from mixq.quant.observers.mse import MSEObserver
from mixq.quant.observers.percentile import PercentileObserver
from mixq.quant.spec import ObserverSpec, QuantSpec

__all__ = [
    "NoDataError",
    "Observer",
    "ObserverCapabilities",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PercentileObserver",
    "MSEObserver",
    "EntropyObserver",
    "make_observer",
    "observer_class",
    "observer_names",
    "register_observer",
]

def make_observer(observer: ObserverSpec, spec: QuantSpec, axis: int | None = None,
                  name: str = "") -> Observer:
    """Build the observer ``observer.name`` describes for a tensor quantized per ``spec``.

    Example: ``make_observer(ObserverSpec("percentile", percentile=99.9), DEFAULT_ACTIVATION, name="fc1")``.
    Raises ``ValueError`` when a histogram-based observer is asked for per-channel (``axis`` not None)
    ranges.
    """
    cls = observer_class(observer.name)
    if not cls.capabilities.per_channel and axis is not None:
        where = f" for {name!r}" if name else ""
        per_channel = " or ".join(repr(n) for n in observer_names(per_channel=True))
        raise ValueError(f"the {observer.name!r} observer is per-tensor only, but axis={axis} was requested"
                         f"{where}; use {per_channel} for per-channel ranges (e.g. weights)")
    return cls.from_spec(observer, spec, axis=axis, name=name)

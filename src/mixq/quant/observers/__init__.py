"""Calibration observers: each records statistics of a tensor and turns them into ``(scale, zero_point)``.

``minmax`` and ``moving_average`` work per tensor or per channel; the histogram-based ``percentile``, ``mse``
and ``entropy`` observers are per tensor only.
"""

from __future__ import annotations

from mixq.quant.observers.base import NoDataError, Observer
from mixq.quant.observers.entropy import EntropyObserver
from mixq.quant.observers.minmax import MinMaxObserver
from mixq.quant.observers.moving_average import MovingAverageMinMaxObserver
from mixq.quant.observers.mse import MSEObserver
from mixq.quant.observers.percentile import PercentileObserver
from mixq.quant.spec import ObserverSpec, QuantSpec

__all__ = [
    "NoDataError",
    "Observer",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PercentileObserver",
    "MSEObserver",
    "EntropyObserver",
    "make_observer",
]

_HISTOGRAM_BASED = ("percentile", "mse", "entropy")


def make_observer(observer: ObserverSpec, spec: QuantSpec, axis: int | None = None,
                  name: str = "") -> Observer:
    """Build the observer ``observer.name`` describes for a tensor quantized per ``spec``.

    Example: ``make_observer(ObserverSpec("percentile", percentile=99.9), DEFAULT_ACTIVATION, name="fc1")``.
    Raises ``ValueError`` when a histogram-based observer is asked for per-channel (``axis`` not None)
    ranges.
    """
    if observer.name in _HISTOGRAM_BASED and axis is not None:
        where = f" for {name!r}" if name else ""
        raise ValueError(f"the {observer.name!r} observer is per-tensor only, but axis={axis} was requested"
                         f"{where}; use 'minmax' or 'moving_average' for per-channel ranges (e.g. weights)")
    if observer.name == "minmax":
        return MinMaxObserver(spec, axis=axis, name=name)
    if observer.name == "moving_average":
        return MovingAverageMinMaxObserver(spec, axis=axis, name=name,
                                           averaging_constant=observer.averaging_constant)
    if observer.name == "percentile":
        return PercentileObserver(spec, name=name, bins=observer.bins, percentile=observer.percentile)
    if observer.name == "mse":
        return MSEObserver(spec, name=name, bins=observer.bins)
    if observer.name == "entropy":
        return EntropyObserver(spec, name=name, bins=observer.bins)
    raise ValueError(f"unknown observer {observer.name!r}")

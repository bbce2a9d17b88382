"""Percentile observer: clips the rarest extremes on each side of the data, read off the histogram."""

from __future__ import annotations

import torch

from mixq.quant.observers.base import ObserverCapabilities, register_observer
from mixq.quant.observers.histogram import HistogramObserver
from mixq.quant.spec import ObserverSpec, QuantSpec


@register_observer("percentile")
class PercentileObserver(HistogramObserver):
    """Range ``[P(100 - p), P(p)]`` of everything observed, with ``P`` the percentile read off the histogram.

    With the default ``p = 99.99`` (the ``ObserverSpec`` default) the 0.01 % most extreme values on each side
    are clipped. The lower end is clipped only for data with negative values: for data that is all ``>= 0``
    (e.g. after ReLU) the minimum stays the true minimum, so the dense values near 0 are never cut.
    Percentiles interpolate linearly inside the bin that holds them, so they are exact to within one
    histogram bin; ``p = 100`` gives the exact min and max. Example: ``PercentileObserver(DEFAULT_ACTIVATION,
    percentile=99.9)``.
    """

    capabilities = ObserverCapabilities("histogram", per_channel=False, streaming=False, ladder=("mse",))

    @classmethod
    def from_spec(cls, observer: ObserverSpec, spec: QuantSpec, axis: int | None = None,
                  name: str = "") -> PercentileObserver:
        return cls(spec, axis=axis, name=name, bins=observer.bins, percentile=observer.percentile)

    def __init__(self, spec: QuantSpec, axis: int | None = None, name: str = "", bins: int = 2048,
                 percentile: float = 99.99) -> None:
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        super().__init__(spec, axis, name, bins)
        self.percentile = percentile

    def _quantile(self, fraction: float) -> torch.Tensor:
        """The value below which ``fraction`` of the observed counts lie, interpolated inside its bin."""
        cum = torch.cumsum(self.histogram, 0)
        target = fraction * float(cum[-1])
        i = int(torch.searchsorted(cum, torch.tensor([target], dtype=torch.float64))[0])
        i = min(i, self.bins - 1)
        before = float(cum[i - 1]) if i > 0 else 0.0
        inside = (target - before) / float(self.histogram[i]) if self.histogram[i] > 0 else 0.0
        value = self.hist_min + self.bin_width * (i + min(max(inside, 0.0), 1.0))
        return value.to(torch.float32).clamp(self.min_val, self.max_val)

    def calculate_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.percentile >= 100.0:
            return self.min_val, self.max_val
        hi = self._quantile(self.percentile / 100.0)
        lo = self._quantile(1.0 - self.percentile / 100.0) if self.min_val < 0 else self.min_val
        return lo, hi

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, percentile={self.percentile}"

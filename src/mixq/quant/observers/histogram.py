"""Shared per-tensor histogram collector for the percentile, MSE and entropy observers.

Range growth: the histogram keeps ``bins`` equal-width bins starting at ``hist_min``. When a batch falls
outside that range, the range is widened so that the new bin width is an integer multiple ``k`` of the old
one and every new edge is an old edge; each new bin is then the exact sum of whole old bins. This never
smears counts across bins (a count is always inside the bin that holds it), at the cost of resolution: after
a widening, the data span at least about half of the bins. We chose exactness over resolution because
re-binning by proportional overlap approximates anew at every widening and its error accumulates over many
calibration batches.

Each batch is counted by ``binning.count_bins``: every value in the bin whose float64 edges hold it (bin
``i`` is ``[hist_min + i*w, hist_min + (i+1)*w)``, computed in float64), at the cost of a few float32 passes.

Exact zeros are also counted apart (``zero_count``): 0 is on every quantization grid (its zero point), so a
search over clipping ranges can leave them out of its error (ReLU/ReLU6 outputs are often mostly zeros, which a
histogram cannot tell from the small values sharing their bin).
"""

from __future__ import annotations

import math

import torch

from mixq.quant.observers.base import Observer, ObserverCapabilities
from mixq.quant.observers.binning import count_bins, uniform_edges
from mixq.quant.spec import ObserverSpec, QuantSpec

# a constant first batch gets a tiny placeholder bin width (relative to its value) until a wider batch arrives
_PLACEHOLDER_RELATIVE_WIDTH = 2.0**-20


class HistogramObserver(Observer):
    """Base class: a float64 histogram of everything observed (per tensor only), the exact min and max, and the
    number of exact zeros.

    Subclasses implement ``calculate_range()`` from ``histogram``, ``bin_edges()``, ``zero_count`` and
    ``min_val``/``max_val``. All statistics are buffers of fixed shape, so ``state_dict`` round-trips into an
    observer built with the same ``bins`` (default 2048, the ``ObserverSpec`` default).
    """

    capabilities = ObserverCapabilities("histogram", per_channel=False, streaming=False)

    @classmethod
    def from_spec(cls, observer: ObserverSpec, spec: QuantSpec, axis: int | None = None,
                  name: str = "") -> HistogramObserver:
        return cls(spec, axis=axis, name=name, bins=observer.bins)

    def __init__(self, spec: QuantSpec, axis: int | None = None, name: str = "", bins: int = 2048) -> None:
        if axis is not None:
            raise ValueError(f"{type(self).__name__} is per-tensor only (got axis={axis}); use the "
                             "'minmax' or 'moving_average' observer for per-channel ranges")
        if bins < 16:
            raise ValueError(f"bins must be >= 16, got {bins}")
        super().__init__(spec, None, name)
        self.bins = bins
        self.register_buffer("histogram", torch.zeros(bins, dtype=torch.float64))
        self.register_buffer("hist_min", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("bin_width", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        self.register_buffer("zero_count", torch.tensor(0.0, dtype=torch.float64))

    def _observe(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if self.has_data:
            self.min_val = torch.minimum(self.min_val, lo)
            self.max_val = torch.maximum(self.max_val, hi)
            self._widen(float(lo), float(hi))
        else:
            self.min_val, self.max_val = lo.clone(), hi.clone()
            width = (float(hi) - float(lo)) / self.bins
            if width <= 0.0:
                width = max(abs(float(lo)), 1.0) * _PLACEHOLDER_RELATIVE_WIDTH / self.bins
            self.hist_min.fill_(float(lo))
            self.bin_width.fill_(width)
        counts, zeros = count_bins(x, float(self.hist_min), float(self.bin_width), self.bins, float(lo), float(hi))
        self.histogram += counts
        self.zero_count += zeros

    def zero_bin(self) -> int:
        """The index of the bin that holds 0 (the nearest end bin when 0 is outside the histogram's range)."""
        return int(torch.searchsorted(self.bin_edges()[1:-1], torch.tensor(0.0, dtype=torch.float64), right=True))

    def nonzero_histogram(self) -> torch.Tensor:
        """``histogram`` without the exact zeros (taken out of the bin that holds 0)."""
        hist = self.histogram.clone()
        i = self.zero_bin()
        hist[i] -= torch.minimum(self.zero_count, hist[i])
        return hist

    def _widen(self, lo: float, hi: float) -> None:
        """Widen the range to cover ``[lo, hi]`` by merging whole old bins (see the module docstring)."""
        start, width, n = float(self.hist_min), float(self.bin_width), self.bins
        end = start + n * width
        if lo >= start and hi <= end:
            return
        shift = max(0, math.ceil((start - lo) / width))  # old bins added below the old start
        new_start = start - shift * width
        factor = max(1, math.ceil((max(hi, end) - new_start) / (n * width)), math.ceil((n + shift) / n))
        new_index = torch.div(torch.arange(n) + shift, factor, rounding_mode="floor").clamp_(max=n - 1)
        merged = torch.zeros_like(self.histogram).index_add_(0, new_index, self.histogram)
        self.histogram.copy_(merged)
        self.hist_min.fill_(new_start)
        self.bin_width.fill_(width * factor)

    def clipped_share(self, scale: torch.Tensor, zero_point: torch.Tensor) -> float | None:
        """Share of the observed counts beyond the grid's saturation points, read off the histogram (uniform
        density inside a bin, each bin cut to the exact ``[min_val, max_val]``)."""
        step, zp = float(scale), float(zero_point)
        lo, hi = (self.spec.qmin - zp - 0.5) * step, (self.spec.qmax - zp + 0.5) * step
        if lo <= float(self.min_val) and hi >= float(self.max_val):
            return 0.0
        edges = self.bin_edges()
        a = edges[:-1].clamp(min=float(self.min_val))
        b = torch.maximum(edges[1:].clamp(max=float(self.max_val)), a)
        width = (b - a).clamp(min=1e-300)
        outside = ((b - hi).clamp(min=0.0) + (lo - a).clamp(min=0.0)).clamp(max=width) / width
        empty = b <= a  # a bin squeezed to a point (the data's extreme): all in or all out
        outside = torch.where(empty, ((a > hi) | (a < lo)).to(torch.float64), outside)
        return float((self.histogram * outside).sum() / self.histogram.sum().clamp(min=1.0))

    def bin_edges(self) -> torch.Tensor:
        """The ``bins + 1`` edges of the histogram (float64)."""
        return uniform_edges(float(self.hist_min), float(self.bin_width), self.bins)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bins={self.bins}"

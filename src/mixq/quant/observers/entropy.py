"""Entropy (KL-divergence) observer: TensorRT-style calibration, generalised to signed and affine ranges."""

from __future__ import annotations

import numpy as np
import torch

from mixq.quant.observers.base import ObserverCapabilities, register_observer
from mixq.quant.observers.histogram import HistogramObserver
from mixq.quant.spec import QuantSpec

_MAX_CANDIDATES = 512  # shrink factors tried, evenly spaced between 1 (the full range) and 0
_EPS = 1e-10  # probability given to empty bins of the quantized distribution where the reference has mass


def _kl_divergence(hist: np.ndarray, a: int, b: int, levels: float) -> float:
    """KL(P || Q) for the candidate that keeps bins ``[a, b)``, quantized to ``levels`` equal groups of bins.

    P is the kept histogram with the clipped counts added to its end bins; Q merges the kept bins (without
    the clipped counts) into groups and spreads each group's total evenly over its non-empty bins.
    """
    kept = hist[a:b]
    p = kept.copy()
    p[0] += hist[:a].sum()
    p[-1] += hist[b:].sum()
    n = b - a
    group = np.floor(np.arange(n) * (levels / n)).astype(np.int64)
    nonzero = kept > 0
    totals = np.bincount(group, weights=kept)
    filled = np.bincount(group, weights=nonzero.astype(np.float64))
    q = np.where(nonzero, totals[group] / np.maximum(filled[group], 1.0), 0.0)
    p /= p.sum()
    q = np.maximum(q / max(q.sum(), 1e-300), _EPS)
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


@register_observer("entropy")
class EntropyObserver(HistogramObserver):
    """Picks the clipping range whose quantized histogram is closest (in KL divergence) to the clipped one.

    As in TensorRT's calibrator, each candidate keeps the histogram bins inside its range (the clipped counts
    are added to the end bins), merges them into as many groups as the integer grid has levels (``qmax - qmin
    + 1``), expands the groups back over their non-empty bins and measures KL(P || Q); the minimum wins. A
    candidate must span at least as many bins as levels (otherwise quantization is invisible at the
    histogram's resolution); if none does, the full min-max range is returned. Exact zeros are left out of P and
    Q (``nonzero_histogram``): every candidate represents 0 exactly, while the histogram would count them as
    spread over the bin they share with small values; on ReLU6 outputs that are mostly zeros this spread alone
    used to pick the narrowest candidate (a range of 0.75 instead of 6 on EfficientNet-Lite0, and top-1 0.0).

    Candidates shrink the range ``[min(min, 0), max(max, 0)]`` toward 0 by a common factor, so non-negative
    data (after ReLU) keep their lower end at 0 and only the upper tail is searched, while signed data clip
    both tails and keep the ratio of their negative to positive extent. For an affine spec (e.g. uint8
    activations with signed data) all levels span the candidate range; for a symmetric spec the grid spans
    ``[-T, T]`` with ``T`` the larger end, so only the candidate's share of the levels is used. Example:
    ``EntropyObserver(DEFAULT_ACTIVATION)``.
    """

    capabilities = ObserverCapabilities("histogram", per_channel=False, streaming=False, ladder=("percentile", "mse"))

    def __init__(self, spec: QuantSpec, axis: int | None = None, name: str = "", bins: int = 2048) -> None:
        super().__init__(spec, axis, name, bins)

    def calculate_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo_full = torch.clamp(self.min_val, max=0.0)
        hi_full = torch.clamp(self.max_val, min=0.0)
        hist = self.nonzero_histogram().numpy()  # 0 is exact on every grid: only the other values can lose
        start, width, n = float(self.hist_min), float(self.bin_width), self.bins
        span = float(hi_full - lo_full)
        levels_full = float(self.spec.qmax - self.spec.qmin + 1)
        if span <= 0.0 or hist.sum() <= 0.0:
            return self.min_val, self.max_val
        best, best_kl = None, float("inf")
        for f in np.linspace(1.0, 0.0, _MAX_CANDIDATES, endpoint=False):
            lo, hi = f * float(lo_full), f * float(hi_full)
            a = int(np.clip(np.floor((lo - start) / width), 0, n - 1))
            b = int(np.clip(np.ceil((hi - start) / width), a + 1, n))
            levels = levels_full
            if self.spec.symmetric:
                levels = levels_full * (hi - lo) / (2.0 * max(-lo, hi))
            if b - a < levels:
                break  # smaller factors only give fewer bins
            kl = _kl_divergence(hist, a, b, levels)
            if kl < best_kl:
                best, best_kl = (a, b), kl
        if best is None:
            return self.min_val, self.max_val
        a, b = best
        lo = torch.tensor(start + a * width, dtype=torch.float32).clamp(self.min_val, self.max_val)
        hi = torch.tensor(start + b * width, dtype=torch.float32).clamp(self.min_val, self.max_val)
        return lo, hi

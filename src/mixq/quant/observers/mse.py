"""MSE observer: the clipping range that minimises the expected squared quantization error (histogram)."""

from __future__ import annotations

import torch

from mixq.quant.observers.base import ObserverCapabilities, register_observer
from mixq.quant.observers.histogram import HistogramObserver
from mixq.quant.primitives import choose_qparams
from mixq.quant.spec import QuantSpec

_SYMMETRIC_STEPS = 100  # shrink factors 0.01, 0.02, ..., 1.0 of the absolute maximum
_AFFINE_STEPS = 40  # shrink factors 1/40, ..., 1.0, searched independently for the min and the max
_CHUNK = 256  # candidates evaluated at once (bounds the candidates x bins temporaries)


@register_observer("mse")
class MSEObserver(HistogramObserver):
    """Picks the range whose integer grid (``spec.qmin..qmax``) gives the least expected squared error.

    Candidates shrink the observed range toward 0: for symmetric specs the absolute maximum by factors 0.01,
    0.02, ..., 1; for affine specs the min and the max independently by factors 1/40, ..., 1 (1600 pairs).
    Each candidate's ``(scale, zero_point)`` comes from ``choose_qparams``, so the error is measured on the
    grid that will actually be used. The error assumes the density is uniform inside each histogram bin:
    values inside the representable range cost the rounding error ``scale**2 / 12``, values beyond it the
    exact integral of their squared distance to the clipping point. The unclipped range is always a
    candidate, so the result is never worse than min-max under this model. Example:
    ``MSEObserver(DEFAULT_ACTIVATION)``.
    """

    capabilities = ObserverCapabilities("histogram", per_channel=False, streaming=False, ladder=("percentile",))

    def __init__(self, spec: QuantSpec, axis: int | None = None, name: str = "", bins: int = 2048) -> None:
        super().__init__(spec, axis, name, bins)

    def _candidates(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo = torch.clamp(self.min_val, max=0.0)
        hi = torch.clamp(self.max_val, min=0.0)
        if self.spec.symmetric:
            f = torch.arange(1, _SYMMETRIC_STEPS + 1, dtype=torch.float32) / _SYMMETRIC_STEPS
            absmax = torch.maximum(-lo, hi)
            return -f * absmax, f * absmax
        f = torch.arange(1, _AFFINE_STEPS + 1, dtype=torch.float32) / _AFFINE_STEPS
        f_lo, f_hi = torch.meshgrid(f, f, indexing="ij")
        return (f_lo * lo).flatten(), (f_hi * hi).flatten()

    def expected_error(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Expected squared quantization error (summed over the observed counts) for each candidate range."""
        spec = self.spec
        scale, zp = choose_qparams(lo, hi, spec.torch_dtype, symmetric=spec.symmetric, bits=spec.bits,
                                   narrow=spec.narrow_range and spec.symmetric)
        s = scale.to(torch.float64)[:, None]
        z = zp.to(torch.float64)[:, None]
        clip_lo, clip_hi = (spec.qmin - z) * s, (spec.qmax - z) * s
        edges = self.bin_edges()
        a, b, count = edges[:-1], edges[1:], self.histogram
        density = count / (b - a)  # counts per unit length, uniform inside a bin
        # part of each bin above clip_hi: integral of (x - clip_hi)^2 over [max(a, clip_hi), b]
        top = (b - clip_hi).clamp(min=0.0) ** 3 - (a - clip_hi).clamp(min=0.0) ** 3
        bottom = (clip_lo - a).clamp(min=0.0) ** 3 - (clip_lo - b).clamp(min=0.0) ** 3
        inside = (torch.minimum(b, clip_hi) - torch.maximum(a, clip_lo)).clamp(min=0.0)
        per_bin = density * ((top + bottom) / 3.0 + inside * s**2 / 12.0)
        return per_bin.sum(dim=1)

    def calculate_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self._candidates()
        errors = torch.cat([self.expected_error(lo[i:i + _CHUNK], hi[i:i + _CHUNK])
                            for i in range(0, lo.numel(), _CHUNK)])
        best = int(torch.argmin(errors))
        return lo[best], hi[best]

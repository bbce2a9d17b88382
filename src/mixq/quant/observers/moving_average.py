"""Moving-average min-max observer: an exponential moving average of each batch's min and max."""

from __future__ import annotations

import torch

from mixq.quant.observers.base import ObserverCapabilities, register_observer
from mixq.quant.observers.minmax import MinMaxObserver
from mixq.quant.spec import ObserverSpec, QuantSpec


@register_observer("moving_average")
class MovingAverageMinMaxObserver(MinMaxObserver):
    """Smooths per-batch ranges: ``min <- min + c * (batch_min - min)`` (same for max); the first batch
    initialises.

    Less sensitive than ``MinMaxObserver`` to one unusual batch, at the price of clipping rare extremes.
    ``averaging_constant`` ``c`` (default 0.01, the ``ObserverSpec`` default) is the weight of the newest
    batch; ``c = 1`` keeps only the last batch. Works per tensor (``axis=None``) or per channel. Example:
    ``obs = MovingAverageMinMaxObserver(DEFAULT_ACTIVATION, averaging_constant=0.1)``.
    """

    # a moving average depends on the order of the batches; autoquantize's one histogram pass cannot give it
    capabilities = ObserverCapabilities("range", autoquant=False)

    @classmethod
    def from_spec(cls, observer: ObserverSpec, spec: QuantSpec, axis: int | None = None,
                  name: str = "") -> MovingAverageMinMaxObserver:
        return cls(spec, axis=axis, name=name, averaging_constant=observer.averaging_constant)

    def __init__(self, spec: QuantSpec, axis: int | None = None, name: str = "",
                 averaging_constant: float = 0.01) -> None:
        if not 0.0 < averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        super().__init__(spec, axis, name)
        self.averaging_constant = averaging_constant

    def _observe(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if self.has_data:
            if lo.shape != self.min_val.shape:
                raise ValueError(f"batch statistics of shape {tuple(lo.shape)} do not match the running "
                                 f"statistics of shape {tuple(self.min_val.shape)}; check axis={self.axis}")
            c = self.averaging_constant
            lo = self.min_val + c * (lo - self.min_val)
            hi = self.max_val + c * (hi - self.max_val)
        self.min_val, self.max_val = lo, hi

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, averaging_constant={self.averaging_constant}"

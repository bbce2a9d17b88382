"""Min-max observer: the running minimum and maximum. Exact cover of everything seen; sensitive to outliers."""

from __future__ import annotations

import torch

from mixq.quant.observers.base import Observer, ObserverCapabilities, register_observer
from mixq.quant.spec import QuantSpec


@register_observer("minmax")
class MinMaxObserver(Observer):
    """Tracks the global (or per-channel) min and max of all observed batches.

    The default for weights (where the whole range matters) and a fast, outlier-sensitive choice for
    activations. Example: ``obs = MinMaxObserver(DEFAULT_ACTIVATION); obs(x); scale, zp = obs.calculate_qparams()``.
    """

    capabilities = ObserverCapabilities("range", ladder=("percentile", "mse"))

    def __init__(self, spec: QuantSpec, axis: int | None = None, name: str = "") -> None:
        super().__init__(spec, axis, name)
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    def _observe(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        # the buffers start at (+inf, -inf), so the first batch needs no branch (and no host sync to ask)
        self.min_val, self.max_val = torch.minimum(lo, self.min_val), torch.maximum(hi, self.max_val)

    def calculate_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.min_val, self.max_val

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # per-channel buffers change shape after the first batch; adopt the saved shape before loading
        for key in ("min_val", "max_val"):
            if prefix + key in state_dict:
                setattr(self, key, torch.empty_like(state_dict[prefix + key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

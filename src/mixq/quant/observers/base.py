"""The observer contract: ``forward(x)`` records statistics and returns ``x``; ``calculate_qparams()`` turns them
into ``(scale, zero_point)`` with the shared primitives. Statistics live in buffers so ``state_dict`` round-trips."""

from __future__ import annotations

import torch
from torch import nn

from mixq.quant.primitives import choose_qparams
from mixq.quant.spec import QuantSpec


class NoDataError(RuntimeError):
    """Raised when quantization parameters are requested from an observer that never saw data."""


class Observer(nn.Module):
    """Base class: validates inputs, tracks whether data was seen, and derives qparams from a range.

    Subclasses implement ``_observe(x)`` (``x`` is detached float32, finite) and ``calculate_range()``.
    ``axis`` selects per-channel statistics (weights); ``None`` means per-tensor (activations).
    """

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
        if not torch.isfinite(data).all():
            where = f" at {self.name!r}" if self.name else ""
            raise ValueError(
                f"non-finite values (NaN or inf) reached the observer{where}; check the calibration data "
                "and the float model's outputs on it"
            )
        self._observe(data)
        self.num_batches += 1
        return x

    @property
    def has_data(self) -> bool:
        return bool(self.num_batches.item() > 0)

    def _observe(self, x: torch.Tensor) -> None:
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

    def _reduce_dims(self, x: torch.Tensor) -> list[int]:
        """Dimensions to reduce over: all of them per-tensor, all but ``axis`` per-channel."""
        if self.axis is None:
            return list(range(x.dim()))
        axis = self.axis % x.dim()
        return [d for d in range(x.dim()) if d != axis]

    def extra_repr(self) -> str:
        return f"spec={self.spec}, axis={self.axis}, batches={int(self.num_batches)}"

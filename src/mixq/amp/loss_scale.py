"""Loss-scaling options and the thin layer over :class:`torch.amp.GradScaler` that mixq needs.

The scaler itself is PyTorch's; this module only describes how to configure it (a frozen :class:`LossScale`)
and reads back the one thing mixq needs from it after ``unscale_``: whether any gradient was non-finite.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

__all__ = ["LossScale", "found_inf", "make_grad_scaler", "set_found_inf"]

_MODES = ("dynamic", "static", "none")


@dataclasses.dataclass(frozen=True)
class LossScale:
    """How fp16 gradients are scaled.

    Attributes:
        mode: ``"dynamic"`` (grow/back off like PyTorch), ``"static"`` (fixed ``init_scale``) or ``"none"``.
        init_scale: starting (or fixed) scale; PyTorch's default is 2**16.
        growth_factor: multiplier after ``growth_interval`` clean steps (dynamic only).
        backoff_factor: multiplier after an overflow (dynamic only).
        growth_interval: clean steps between growths (dynamic only).
        min_scale: floor; when a dynamic scale falls below it, training stops with
            :class:`~mixq.amp.errors.LossScaleCollapseError` naming the first layer with non-finite gradients.
            ``None`` disables the check.

    Example:
        >>> LossScale.parse(1024.0)
        LossScale(mode='static', init_scale=1024.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000, min_scale=1.0)
    """  # noqa: E501

    mode: str = "dynamic"
    init_scale: float = 2.0**16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    min_scale: float | None = 1.0

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"loss scale mode {self.mode!r} is unknown; use one of {', '.join(_MODES)}")
        if not (math.isfinite(self.init_scale) and self.init_scale > 0):
            raise ValueError(f"init_scale must be a positive finite number, got {self.init_scale}")
        if not (math.isfinite(self.growth_factor) and self.growth_factor > 1.0):
            raise ValueError(f"growth_factor must be > 1, got {self.growth_factor}")
        if not 0.0 < self.backoff_factor < 1.0:
            raise ValueError(f"backoff_factor must be in (0, 1), got {self.backoff_factor}")
        if not (isinstance(self.growth_interval, int) and self.growth_interval >= 1):
            raise ValueError(f"growth_interval must be a positive int, got {self.growth_interval!r}")
        if self.min_scale is not None and not (math.isfinite(self.min_scale) and self.min_scale > 0):
            raise ValueError(f"min_scale must be positive or None, got {self.min_scale}")

    @classmethod
    def parse(cls, value: str | float | LossScale | None) -> LossScale:
        """Accept ``"dynamic"``, ``"none"``/``None``, a number (static scale) or a :class:`LossScale`."""
        if isinstance(value, LossScale):
            return value
        if value is None:
            return cls(mode="none")
        if isinstance(value, bool):
            raise TypeError("loss_scale must be 'dynamic', 'none', a number or a LossScale, not a bool")
        if isinstance(value, (int, float)):
            return cls(mode="static", init_scale=float(value))
        if isinstance(value, str) and value in ("dynamic", "none"):
            return cls(mode=value)
        raise ValueError(f"loss_scale={value!r} is not understood; use 'dynamic', 'none' or a positive number")

    def to_dict(self) -> dict[str, Any]:
        """Serialise to a JSON-friendly dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LossScale:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)


def make_grad_scaler(spec: LossScale, device_type: str, enabled: bool) -> torch.amp.GradScaler:
    """Build PyTorch's scaler for ``spec``; disabled (a no-op) when ``enabled`` is false or mode is none."""
    on = enabled and spec.mode != "none"
    return torch.amp.GradScaler(
        device_type,
        init_scale=spec.init_scale,
        growth_factor=spec.growth_factor,
        backoff_factor=spec.backoff_factor,
        growth_interval=spec.growth_interval,
        enabled=on,
    )


def _found_inf_tensors(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    # GradScaler records one found-inf flag per device in unscale_(); PyTorch has no public getter.
    return list(scaler._found_inf_per_device(optimizer).values())


def found_inf(scaler: torch.amp.GradScaler, optimizers: list[torch.optim.Optimizer]) -> torch.Tensor:
    """Sum of the found-inf flags that ``scaler.unscale_`` recorded for ``optimizers`` (a 0-dim tensor)."""
    flags = [f.float().sum() for opt in optimizers for f in _found_inf_tensors(scaler, opt)]
    return torch.stack(flags).sum()


def set_found_inf(scaler: torch.amp.GradScaler, optimizers: list[torch.optim.Optimizer], value: float) -> None:
    """Overwrite every recorded flag in place, so ``step``/``update`` act on one global verdict."""
    for opt in optimizers:
        for flag in _found_inf_tensors(scaler, opt):
            flag.fill_(value)

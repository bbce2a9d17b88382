"""Per-step bookkeeping of a :class:`~mixq.amp.MixedPrecision` run: scale, skipped steps, norms."""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any

__all__ = ["AmpStats", "StepRecord"]


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """One optimizer step: its index, the scale after ``update()``, skipped or not, pre-clip norm."""

    step: int
    scale: float
    skipped: bool
    grad_norm: float | None = None


class AmpStats:
    """Running statistics; ``print(mp.stats)`` gives a one-line summary, :meth:`summary` a Markdown table.

    Attributes:
        scale: current loss scale (1.0 when loss scaling is off).
        steps: optimizer steps attempted (micro-batches of an accumulation count once).
        skipped_steps: steps skipped because a gradient (or the gradient norm) was inf/NaN.
        consecutive_skips: skipped steps since the last applied one.
        skipped_at: indices of the skipped steps.
        history: the last ``history_size`` :class:`StepRecord` objects.

    Example:
        >>> s = AmpStats(scale=8.0)
        >>> s.record(scale=4.0, skipped=True)
        >>> s
        AmpStats(scale=4.0, steps=1, skipped_steps=1, skipped_at=[0])
    """

    def __init__(self, scale: float = 1.0, history_size: int = 10_000) -> None:
        if history_size < 0:
            raise ValueError(f"history_size must be >= 0, got {history_size}")
        self.scale = scale
        self.steps = 0
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self.skipped_at: list[int] = []
        self.history: deque[StepRecord] = deque(maxlen=history_size)

    @property
    def applied_steps(self) -> int:
        """Steps whose update reached the weights."""
        return self.steps - self.skipped_steps

    @property
    def scale_history(self) -> list[float]:
        """Loss scale after each recorded step."""
        return [r.scale for r in self.history]

    def record(self, scale: float, skipped: bool, grad_norm: float | None = None) -> None:
        """Append one optimizer step."""
        self.history.append(StepRecord(self.steps, scale, skipped, grad_norm))
        if skipped:
            self.skipped_steps += 1
            self.skipped_at.append(self.steps)
        self.consecutive_skips = self.consecutive_skips + 1 if skipped else 0
        self.scale = scale
        self.steps += 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly snapshot (used by ``MixedPrecision.state_dict``)."""
        return {
            "scale": self.scale,
            "steps": self.steps,
            "skipped_steps": self.skipped_steps,
            "consecutive_skips": self.consecutive_skips,
            "skipped_at": list(self.skipped_at),
            "history": [dataclasses.astuple(r) for r in self.history],
            "history_size": self.history.maxlen,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AmpStats:
        """Inverse of :meth:`to_dict`."""
        stats = cls(scale=float(data["scale"]), history_size=int(data["history_size"]))
        stats.steps = int(data["steps"])
        stats.skipped_steps = int(data["skipped_steps"])
        stats.consecutive_skips = int(data.get("consecutive_skips", 0))
        stats.skipped_at = [int(i) for i in data["skipped_at"]]
        stats.history.extend(StepRecord(*r) for r in data["history"])
        return stats

    def summary(self) -> str:
        """Markdown summary: totals plus the scale changes and skipped steps of the recorded history."""
        rate = self.skipped_steps / self.steps if self.steps else 0.0
        lines = [
            "| steps | applied | skipped | skip rate | current scale |",
            "|---:|---:|---:|---:|---:|",
            f"| {self.steps} | {self.applied_steps} | {self.skipped_steps} | {rate:.2%} | {self.scale:g} |",
        ]
        changes = [r for i, r in enumerate(self.history) if r.skipped or i == 0 or r.scale != self.history[i - 1].scale]
        if changes:
            lines += ["", "| step | scale after | skipped |", "|---:|---:|:---:|"]
            lines += [f"| {r.step} | {r.scale:g} | {'yes' if r.skipped else ''} |" for r in changes[-20:]]
        return "\n".join(lines)

    def __repr__(self) -> str:
        tail = self.skipped_at[-10:]
        shown = ("[..., " if len(self.skipped_at) > 10 else "[") + ", ".join(map(str, tail)) + "]"
        return (
            f"AmpStats(scale={self.scale:g}, steps={self.steps}, skipped_steps={self.skipped_steps}, "
            f"skipped_at={shown})"
        )

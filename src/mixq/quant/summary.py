"""What ``mixq.quantize`` did to each layer, and why: attached to the result as ``model.mixq_summary``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (what it adds to a saved model)."""
    tensors = list(module.parameters()) + [b for b in module.buffers() if b is not None]
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class LayerReport:
    """One layer's outcome: ``quantized`` (with how) or ``float`` (with the reason)."""

    name: str
    kind: str
    status: str
    detail: str
    bytes_before: int = 0
    bytes_after: int = 0


@dataclass
class QuantizationSummary:
    """Per-layer table of a quantization run; ``print(summary)`` shows it, ``to_dict()`` serialises it.

    ``clipped`` holds one line per activation tensor whose calibrated range saturates a large share of its
    calibration values (``mixq.quantize`` also warns with them): such a range can silently cost all accuracy.
    """

    mode: str
    layers: list[LayerReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    clipped: list[str] = field(default_factory=list)

    def add(self, name: str, kind: str, status: str, detail: str, before: int = 0, after: int = 0) -> None:
        self.layers.append(LayerReport(name, kind, status, detail, before, after))

    @property
    def quantized(self) -> list[LayerReport]:
        return [r for r in self.layers if r.status == "quantized"]

    @property
    def skipped(self) -> list[LayerReport]:
        return [r for r in self.layers if r.status != "quantized"]

    def sort_by(self, model: nn.Module) -> None:
        """Order the layer rows as the modules appear in ``model`` (rows it does not hold, e.g. adds, go last)."""
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        self.layers.sort(key=lambda r: order.get(r.name, len(order)))

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "layers": [asdict(r) for r in self.layers], "notes": list(self.notes),
                "clipped": list(self.clipped)}

    def __str__(self) -> str:
        before = sum(r.bytes_before for r in self.quantized)
        after = sum(r.bytes_after for r in self.quantized)
        sizes = (f"; quantized weights {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB ({before / after:.1f}x smaller)"
                 if after else "")  # no sizes before conversion (a QAT plan)
        lines = [f"mixq {self.mode} quantization: {len(self.quantized)} layers quantized, "
                 f"{len(self.skipped)} left float{sizes}"]
        width = max([len(r.name) for r in self.layers] + [5])
        kind_w = max([len(r.kind) for r in self.layers] + [4])
        lines.append(f"  {'layer':<{width}}  {'type':<{kind_w}}  {'status':<9}  detail")
        lines += [f"  {r.name:<{width}}  {r.kind:<{kind_w}}  {r.status:<9}  {r.detail}" for r in self.layers]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  clipped: {c}" for c in self.clipped]
        return "\n".join(lines)

"""The report's PNG plots, drawn with matplotlib's object API (no pyplot, no display needed) and saved atomically."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from mixq.report.files import atomic_path


def _figure(width: float, height: float, ncols: int = 1) -> tuple:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _save(fig: object, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")  # type: ignore[attr-defined]
    return Path(path)


def accuracy_vs_size(names: Sequence[str], size_kb: Sequence[float], accuracy: Sequence[float],
                     path: str | os.PathLike) -> Path:
    """Scatter of ONNX file size against ONNX Runtime accuracy, one labelled point per variant."""
    fig, (ax,) = _figure(6.5, 4.2)
    markers = "osD^vP*Xh<>"
    for i, (name, x, y) in enumerate(zip(names, size_kb, accuracy, strict=True)):  # a legend, not labels: the
        ax.scatter([x], [y * 100], s=50, marker=markers[i % len(markers)], label=name, zorder=3)  # points cluster
    low, high = min(accuracy) * 100, max(accuracy) * 100
    pad = max(0.5, (high - low) * 0.2)
    ax.set_ylim(low - pad, min(100.0, high + pad) + 0.1)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("ONNX file size (KB)")
    ax.set_ylabel("test accuracy on ONNX Runtime (%)")
    ax.set_title("accuracy vs size")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def latency_bars(names: Sequence[str], latency_ms: Mapping[int, Sequence[float]], path: str | os.PathLike) -> Path:
    """One panel per batch size: median ONNX Runtime latency of each variant."""
    fig, axes = _figure(4.0 * len(latency_ms), 4.0, ncols=len(latency_ms))
    for ax, (batch, values) in zip(axes, latency_ms.items(), strict=True):
        ax.barh(list(names), list(values), color="tab:orange")
        ax.invert_yaxis()
        ax.set_xlabel("median latency (ms)")
        ax.set_title(f"batch {batch}")
        ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def training_curves(losses: Mapping[str, Sequence[float]], scales: Mapping[str, Sequence[float]],
                    path: str | os.PathLike) -> Path:
    """Training loss per step (left) and loss scale per step (right, log scale) for each precision."""
    fig, (left, right) = _figure(10.0, 3.8, ncols=2)
    for name, values in losses.items():
        left.plot(range(len(values)), values, label=name, linewidth=1)
    left.set_xlabel("optimizer step")
    left.set_ylabel("training loss (cross-entropy)")
    left.set_title("training loss")
    left.legend()
    left.grid(alpha=0.3)
    for name, values in scales.items():
        right.step(range(len(values)), values, where="post", label=name)
    right.set_xlabel("optimizer step")
    right.set_ylabel("loss scale")
    right.set_yscale("log")
    right.set_title("loss scale (1 = no scaling)")
    right.legend()
    right.grid(alpha=0.3)
    return _save(fig, path)


def layer_error(names: Sequence[str], sqnr_db: Sequence[float], path: str | os.PathLike, title: str) -> Path:
    """Horizontal bars of signal-to-quantization-noise ratio (dB) per layer: shorter bars are worse."""
    fig, (ax,) = _figure(6.5, 0.5 * len(names) + 1.5)
    ax.barh(list(names), list(sqnr_db), color="tab:green")
    ax.invert_yaxis()
    ax.set_xlabel("SQNR of the model output vs fp32 (dB, higher is better)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)

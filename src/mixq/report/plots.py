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
    ax.scatter(size_kb, [a * 100 for a in accuracy], s=40, color="tab:blue")
    order = sorted(range(len(names)), key=lambda i: size_kb[i])
    for rank, i in enumerate(order):  # alternate labels above and below, so neighbours do not overlap
        ax.annotate(names[i], (size_kb[i], accuracy[i] * 100), textcoords="offset points", fontsize=8,
                    xytext=(0, 8 if rank % 2 == 0 else -14), ha="center")
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

"""Export one variant to ONNX, run it in ONNX Runtime and measure it: size, accuracy, latency, agreement."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mixq.demo.context import DemoContext
from mixq.demo.variants import Variant
from mixq.export.backend import get_format, get_runtime
from mixq.report import Latency, measure_latency


def sqnr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical)."""
    noise = float(np.sum((np.asarray(actual, np.float64) - reference) ** 2))
    signal = float(np.sum(np.asarray(reference, np.float64) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(signal / noise)


@dataclass
class VariantResult:
    """Everything measured for one variant; ``to_dict()`` is its entry in ``report.json``."""

    variant: str
    about: str
    onnx_file: str
    size_kb: float
    accuracy: float
    pytorch_accuracy: float
    agreement: float  # fraction of test images where ONNX Runtime and the PyTorch simulation predict the same class
    max_abs_diff_vs_pytorch: float
    sqnr_db_vs_fp32: float
    latency: dict[int, Latency]
    build_seconds: float
    integer_kernels: dict[str, int] = field(default_factory=dict)
    float_compute: dict[str, int] = field(default_factory=dict)
    runtime_kernels: dict[str, int] | None = None  # what the chosen runtime compiled (OpenVINO), by precision
    summary: Any = None  # QuantizationSummary for quantized variants
    accuracy_delta_pp: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in vars(self).items() if k not in ("latency", "summary")}
        for batch, lat in self.latency.items():
            data[f"latency_b{batch}_ms"] = lat.median_ms
            data[f"latency_b{batch}_p90_ms"] = lat.p90_ms
        data["latency_runs"] = next(iter(self.latency.values())).runs if self.latency else 0
        data["summary"] = self.summary.to_dict() if self.summary is not None else None
        return data


def _fp32_logits(ctx: DemoContext) -> np.ndarray:
    with torch.no_grad():
        return ctx.fp32(ctx.data["x_test"]).numpy()


def evaluate_variant(ctx: DemoContext, variant: Variant) -> VariantResult:
    """Build ``variant``, export it to ``ctx.out/<name>.onnx`` and measure it on the test split."""
    start = time.perf_counter()
    model = variant.build(ctx).eval()
    build_seconds = time.perf_counter() - start
    ctx.artifacts.setdefault("models", {})[variant.name] = model  # the LiteRT section writes some of them again
    x_test, y_test = ctx.data["x_test"], ctx.data["y_test"].numpy()
    runtime = get_runtime(ctx.settings.runtime)
    fmt = get_format(runtime.format)
    path = fmt.export(model, ctx.example, ctx.out / f"{variant.file_stem}{fmt.suffix}", runtime=runtime.label)
    session = runtime.session(path, ctx.settings.threads)
    (ort_logits,) = runtime.run(session, runtime.feeds(session, [x_test]))
    with torch.no_grad():
        sim_logits = model(x_test).float().numpy()
    latency = {b: measure_latency(session, runtime.feeds(session, [x_test[:b]]), runs=ctx.settings.latency_runs)
               for b in ctx.settings.batches}
    kernels = fmt.inspect(path).to_dict()
    result = VariantResult(
        variant=variant.name, about=variant.about, onnx_file=path.name, size_kb=path.stat().st_size / 1024,
        accuracy=float((ort_logits.argmax(1) == y_test).mean()),
        pytorch_accuracy=float((sim_logits.argmax(1) == y_test).mean()),
        agreement=float((ort_logits.argmax(1) == sim_logits.argmax(1)).mean()),
        max_abs_diff_vs_pytorch=float(np.abs(ort_logits - sim_logits).max()),
        sqnr_db_vs_fp32=sqnr_db(_fp32_logits(ctx), ort_logits), latency=latency, build_seconds=build_seconds,
        integer_kernels=dict(sorted(kernels["ort_integer_kernels"].items())),
        float_compute=dict(sorted(kernels["ort_float_compute"].items())),
        runtime_kernels=runtime.kernel_counts(session),
        summary=getattr(model, "mixq_summary", None),
    )
    if ctx.results:
        result.accuracy_delta_pp = (result.accuracy - ctx.results[0].accuracy) * 100
    return result

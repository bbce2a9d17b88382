"""The end-to-end demo on a built-in default: a residual CNN trained on scikit-learn's bundled digits, quantized
every way mixq can, exported to ONNX and measured on ONNX Runtime (accuracy, size, latency, agreement)."""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


class DigitsCNN(nn.Module):
    """Conv+BN+ReLU stem, max pooling, one residual block, global average pooling and a Linear head (8x8 input)."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.conv1 = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                   nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        self.relu = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        x = self.relu(self.conv2(self.conv1(x)) + x)
        return self.fc(torch.flatten(self.gap(x), 1))


def load_digits_split(seed: int = 0) -> dict[str, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits (no download), scaled to [0, 1], split 1400 train / 397 test."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    return {"x_train": x[:1400], "y_train": y[:1400], "x_test": x[1400:], "y_test": y[1400:]}


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> nn.Module:
    """Plain fp32 Adam training, mini-batches of 64."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    return model.eval()


def _latency_ms(session: Any, name: str, x: np.ndarray, runs: int) -> float:
    for _ in range(3):
        session.run(None, {name: x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run_demo(out_dir: str | Path = "mixq-report", quick: bool = False) -> Path:
    """Train, quantize (static, dynamic, weight-only, fp16), export, measure; write report.md/json to ``out_dir``."""
    import onnxruntime as ort

    import mixq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    data = load_digits_split()
    model = train(DigitsCNN(), data["x_train"], data["y_train"], epochs=3 if quick else 12)
    calib = [data["x_train"][i:i + 100] for i in range(0, 500, 100)]
    variants: dict[str, nn.Module] = {"fp32": model}
    variants["static int8"] = mixq.quantize(model, "static", calib_data=calib, observer="percentile")
    variants["dynamic int8"] = mixq.quantize(model, "dynamic", example_inputs=calib[0])
    variants["weight-only int8"] = mixq.quantize(model, "weight_only", bits=8, example_inputs=calib[0])
    variants["fp16"] = mixq.quantize(model, "fp16", example_inputs=calib[0])

    x_test, y_test = data["x_test"], data["y_test"].numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = 2, 3
    rows = []
    for name, variant in variants.items():
        path = mixq.export_onnx(variant, calib[0][:2], out / f"{name.replace(' ', '_')}.onnx")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        (ort_out,) = session.run(None, {input_name: x_test.numpy()})
        with torch.no_grad():
            sim = variant(x_test).numpy()
        runs = 10 if quick else 50
        rows.append({
            "variant": name,
            "size_kb": path.stat().st_size / 1024,
            "accuracy": float((ort_out.argmax(1) == y_test).mean()),
            "latency_b1_ms": _latency_ms(session, input_name, x_test[:1].numpy(), runs),
            "latency_b32_ms": _latency_ms(session, input_name, x_test[:32].numpy(), runs),
            "max_abs_diff_vs_pytorch": float(np.abs(ort_out - sim).max()),
        })
    base = rows[0]["accuracy"]
    lines = ["| variant | size (KB) | accuracy | Δ vs fp32 (pp) | ORT b1 (ms) | ORT b32 (ms) | max |ORT − PyTorch| |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['size_kb']:.1f} | {r['accuracy']:.4f} | "
                     f"{(r['accuracy'] - base) * 100:+.2f} | {r['latency_b1_ms']:.3f} | {r['latency_b32_ms']:.3f} | "
                     f"{r['max_abs_diff_vs_pytorch']:.2e} |")
    table = "\n".join(lines)
    summary = str(variants["static int8"].mixq_summary)
    report = f"# mixq demo: digits CNN\n\n{table}\n\n## static int8 layers\n\n```\n{summary}\n```\n"
    (out / "report.md").write_text(report)
    (out / "report.json").write_text(json.dumps({"rows": rows}, indent=2))
    print(table)  # noqa: T201  (the demo's job is to show the table)
    return out / "report.md"

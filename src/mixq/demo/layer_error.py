"""Per-layer quantization error: quantize one layer at a time (static int8, the rest float) and measure the output."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

import mixq
from mixq.demo.context import DemoContext
from mixq.demo.evaluate import sqnr_db


def layer_sensitivity(ctx: DemoContext) -> list[dict[str, Any]]:
    """One row per quantizable layer, plus ``"all layers"``: SQNR (dB) of the model's logits against fp32 and test
    accuracy, in the PyTorch simulation (which matches ONNX Runtime). Low SQNR marks the layers to keep in float
    (``exclude=[...]``) or to fine-tune with QAT."""
    x, y = ctx.data["x_test"], ctx.data["y_test"]
    with torch.no_grad():
        reference = ctx.fp32(x).numpy()

    def quantized(exclude: list[str]) -> dict[str, float]:
        model = mixq.quantize(ctx.fp32, "static", calib_data=ctx.calib, observer="percentile", exclude=exclude,
                              progress=False)
        with torch.no_grad():
            logits = model(x).numpy()
        return {"sqnr_db": sqnr_db(reference, logits), "accuracy": float((logits.argmax(1) == y.numpy()).mean())}

    full = mixq.quantize(ctx.fp32, "static", calib_data=ctx.calib, observer="percentile", progress=False)
    layers = [r for r in full.mixq_summary.quantized if r.kind != "add"]
    names = [r.name for r in layers]
    rows = []
    for layer in tqdm(layers, desc="per-layer error", unit="layer", leave=False, disable=not ctx.settings.progress):
        rows.append({"layer": layer.name, "type": layer.kind, **quantized([n for n in names if n != layer.name])})
    rows.append({"layer": "all layers", "type": "", **quantized([])})
    return rows

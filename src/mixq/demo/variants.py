"""The demo's model variants: each is one small build function from the trained fp32 model, listed in VARIANTS.

To add a variant, write ``def my_variant(ctx: DemoContext) -> nn.Module`` and append
``Variant("name", my_variant, "one-line description")`` to ``VARIANTS``; the export, ONNX Runtime measurements,
table row and plots follow automatically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import mixq
from mixq.demo.context import DemoContext
from mixq.quant.cpu import int8_needs_reduce_range


@dataclass(frozen=True)
class Variant:
    """A named way of turning the trained fp32 model into a deployable one."""

    name: str
    build: Callable[[DemoContext], nn.Module]
    about: str

    @property
    def file_stem(self) -> str:
        return self.name.replace(" ", "_").replace("/", "_")


def fp32(ctx: DemoContext) -> nn.Module:
    return ctx.fp32


def static_int8(ctx: DemoContext) -> nn.Module:
    return mixq.quantize(ctx.fp32, "static", calib_data=ctx.calib, observer="percentile",
                         progress=ctx.settings.progress, reduce_range=int8_needs_reduce_range())


def dynamic_int8(ctx: DemoContext) -> nn.Module:
    return mixq.quantize(ctx.fp32, "dynamic", example_inputs=ctx.example, reduce_range=int8_needs_reduce_range())


def weight_only_int8(ctx: DemoContext) -> nn.Module:
    return mixq.quantize(ctx.fp32, "weight_only", bits=8, example_inputs=ctx.example)


def fp16(ctx: DemoContext) -> nn.Module:
    return mixq.quantize(ctx.fp32, "fp16", example_inputs=ctx.example)


def _qat(ctx: DemoContext, label: str, **options: object) -> nn.Module:
    """Fine-tune a QAT copy of the fp32 model (Adam, one-cycle learning rate up to 1e-3) and convert it."""
    from mixq.demo.training import train_run

    qat = mixq.prepare_qat(ctx.fp32, example_inputs=ctx.example, **options)
    qat, run = train_run(qat, ctx.data, "fp32", epochs=1 if ctx.settings.quick else 2, label=label, lr=1e-3,
                         progress=ctx.settings.progress)
    ctx.artifacts.setdefault("qat_runs", []).append(run)
    return mixq.convert(qat)


def qat_int8(ctx: DemoContext) -> nn.Module:
    return _qat(ctx, "QAT int8", weight_bits=7 if int8_needs_reduce_range() else 8)  # 7: no VNNI (mixq.quant.cpu)


# 4-bit weights with one scale per tensor lose accuracy after post-training quantization rounding to nearest; QAT
# wins it back. The weights are stored as int8 holding 4-bit values, so ONNX Runtime's int8 kernels run them (same
# size and speed). The PTQ row turns off the default bias correction of convolutions, which on its own wins back
# most of the loss (digits CNN: 91.7 % -> 98.5 % with fp32 at 99.2 %): this pair shows what training adds.
W4 = {"bits": 4, "per_channel": False}


def static_w4(ctx: DemoContext) -> nn.Module:
    return mixq.quantize(ctx.fp32, "static", calib_data=ctx.calib, observer="percentile", bias_correction=False,
                         progress=ctx.settings.progress, **W4)


def qat_w4(ctx: DemoContext) -> nn.Module:
    return _qat(ctx, "QAT w4", weight_bits=4, per_channel=False)


def autoquant(ctx: DemoContext) -> nn.Module:
    """Per-layer precisions chosen by ``mixq.autoquantize`` for ONNX Runtime latency on this machine, within 0.5
    points of fp32 accuracy on 300 held-out training images (the test images stay unseen)."""
    x, y = ctx.data["x_train"][-300:], ctx.data["y_train"][-300:]

    def validation_accuracy(model: nn.Module) -> float:
        with torch.no_grad():
            return float((model(x).argmax(1) == y).float().mean())

    result = mixq.autoquantize(ctx.fp32, ctx.calib, validation_accuracy, max_drop=0.005, objective="latency",
                               example_inputs=ctx.example, progress=ctx.settings.progress,
                               runtime=ctx.settings.runtime)
    ctx.artifacts["autoquant"] = result
    return result.model


VARIANTS: list[Variant] = [
    Variant("fp32", fp32, "the trained model, float32 (the baseline)"),
    Variant("static int8", static_int8, "post-training static: int8 weights and activations, percentile calibration"),
    Variant("dynamic int8", dynamic_int8, "post-training dynamic: int8 weights, activations quantized per call"),
    Variant("weight-only int8", weight_only_int8, "int8 weights dequantized on the fly, float activations"),
    Variant("fp16", fp16, "float16 weights, float32 inputs and outputs"),
    Variant("QAT int8", qat_int8, "quantization-aware fine-tuning from fp32, converted to static int8"),
    Variant("static w4", static_w4, "post-training static with 4-bit weights, one scale per tensor, rounded to "
            "nearest (bias_correction=False)"),
    Variant("QAT w4", qat_w4, "the same 4-bit weights after quantization-aware fine-tuning"),
    Variant("autoquant", autoquant, "per-layer precisions chosen by mixq.autoquantize for latency, <= 0.5 pp drop"),
]

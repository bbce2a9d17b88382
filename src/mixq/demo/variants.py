"""The demo's model variants: each is one small build function from the trained fp32 model, listed in VARIANTS.

To add a variant, write ``def my_variant(ctx: DemoContext) -> nn.Module`` and append
``Variant("name", my_variant, "one-line description")`` to ``VARIANTS``; the export, ONNX Runtime measurements,
table row and plots follow automatically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

import mixq
from mixq.demo.context import DemoContext


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
                         progress=ctx.settings.progress)


def dynamic_int8(ctx: DemoContext) -> nn.Module:
    return mixq.quantize(ctx.fp32, "dynamic", example_inputs=ctx.example)


def weight_only_int8(ctx: DemoContext) -> nn.Module:
    return mixq.quantize(ctx.fp32, "weight_only", bits=8, example_inputs=ctx.example)


def fp16(ctx: DemoContext) -> nn.Module:
    return mixq.quantize(ctx.fp32, "fp16", example_inputs=ctx.example)


VARIANTS: list[Variant] = [
    Variant("fp32", fp32, "the trained model, float32 (the baseline)"),
    Variant("static int8", static_int8, "post-training static: int8 weights and activations, percentile calibration"),
    Variant("dynamic int8", dynamic_int8, "post-training dynamic: int8 weights, activations quantized per call"),
    Variant("weight-only int8", weight_only_int8, "int8 weights dequantized on the fly, float activations"),
    Variant("fp16", fp16, "float16 weights, float32 inputs and outputs"),
]

"""Accuracy-aware automatic quantization: per-layer sensitivity, a budgeted search over per-layer precisions,
hardware-aware choices measured on ONNX Runtime, and a report of all of it (``mixq.autoquantize``)."""

from mixq.auto.api import AutoQuantResult, autoquantize
from mixq.auto.evaluation import EvalFnError
from mixq.auto.qat_fallback import TrainFnError
from mixq.auto.report import AutoQuantReport
from mixq.auto.sensitivity import LayerSensitivity
from mixq.quant.spec import LayerOverride

__all__ = ["AutoQuantReport", "AutoQuantResult", "EvalFnError", "LayerOverride", "LayerSensitivity",
           "TrainFnError", "autoquantize"]

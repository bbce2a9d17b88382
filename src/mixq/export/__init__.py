"""Deployment backends, one folder each: ``onnx/`` (ONNX Runtime) and ``tflite/`` (LiteRT) each own their lowering
table, what their runtime computes differently from the core's arithmetic, and their inspection tools.
``errors`` holds the ``ExportError`` both raise; ``backend`` is the one interface (``Format``, ``Runtime``) they
register behind, which the CLI, the report, autoquantize and the demo look up."""

from mixq.export.errors import ExportError
from mixq.export.onnx import FLOAT_COMPUTE, INTEGER_KERNELS, export_onnx, optimized_op_types
from mixq.export.onnx.decoder import export_decoder_onnx, generate_onnx, generate_torch

__all__ = ["FLOAT_COMPUTE", "INTEGER_KERNELS", "ExportError", "export_decoder_onnx", "export_onnx", "generate_onnx",
           "generate_torch", "optimized_op_types"]

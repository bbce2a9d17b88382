"""Deployment backends, one folder each: ``onnx/`` (ONNX Runtime) owns its lowering table, its runtime arithmetic
(the custom ops' eager bodies) and its inspection tools."""

from mixq.export.onnx import FLOAT_COMPUTE, INTEGER_KERNELS, ExportError, export_onnx, optimized_op_types
from mixq.export.onnx.decoder import export_decoder_onnx, generate_onnx, generate_torch

__all__ = ["FLOAT_COMPUTE", "INTEGER_KERNELS", "ExportError", "export_decoder_onnx", "export_onnx", "generate_onnx",
           "generate_torch", "optimized_op_types"]

"""Deployment: ONNX export of mixq models and inspection of what ONNX Runtime runs."""

from mixq.export.onnx_export import ExportError, export_onnx
from mixq.export.ort_graph import FLOAT_COMPUTE, INTEGER_KERNELS, optimized_op_types

__all__ = ["ExportError", "FLOAT_COMPUTE", "INTEGER_KERNELS", "export_onnx", "optimized_op_types"]

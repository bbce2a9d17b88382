"""Deployment backends, one folder each: ``onnx/`` (ONNX Runtime) owns its lowering table, its runtime arithmetic
(the custom ops' eager bodies) and its inspection tools."""

from mixq.export.onnx import FLOAT_COMPUTE, INTEGER_KERNELS, ExportError, export_onnx, optimized_op_types

__all__ = ["FLOAT_COMPUTE", "INTEGER_KERNELS", "ExportError", "export_onnx", "optimized_op_types"]

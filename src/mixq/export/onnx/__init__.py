"""The ONNX Runtime backend.

* ``translations``: the lowering table, each of the core's custom ops (``mixq.quant.kernels``, whose arithmetic
  is ONNX Runtime's) as the QDQ / integer ONNX pattern ONNX Runtime fuses;
* ``contrib_ops``: schemas of the ``com.microsoft`` operators emitted directly;
* ``export``: ``export_onnx`` (torch.export -> ONNX, clean-up, atomic write);
* ``layernorm``: residual LayerNorms written so ONNX Runtime keeps them off its slow ``SkipLayerNormalization``;
* ``ort_graph``: what ONNX Runtime really runs after its own graph optimisation;
* ``inspection``: what ``mixq inspect`` shows of an ONNX file;
* ``backend``: the ``onnx`` format and the ``ort`` runtime, registered with ``mixq.export.backend``.

Importing the package imports neither onnx nor onnxruntime; exporting and inspecting do.
"""

from mixq.export.errors import ExportError
from mixq.export.onnx.export import export_onnx
from mixq.export.onnx.ort_graph import FLOAT_COMPUTE, INTEGER_KERNELS, optimized_op_types

__all__ = ["FLOAT_COMPUTE", "INTEGER_KERNELS", "ExportError", "export_onnx", "optimized_op_types"]

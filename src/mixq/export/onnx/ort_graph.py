"""What ONNX Runtime actually runs: the operator types of a model after ORT's own graph optimisation."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

INTEGER_KERNELS = frozenset({
    "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat", "QGemm", "MatMulNBits", "QAttention", "DynamicQuantizeLSTM",
})
FLOAT_COMPUTE = frozenset({"Conv", "MatMul", "Gemm", "FusedConv", "FusedGemm", "FusedMatMul", "NchwcConv"})


def optimized_op_types(path: str | os.PathLike, level: str = "ORT_ENABLE_EXTENDED") -> Counter[str]:
    """Count operator types in the graph ONNX Runtime (CPU) builds for ``path`` after optimisation.

    ``ORT_ENABLE_EXTENDED`` keeps the result portable (``ALL`` adds layout transforms specific to this CPU).
    """
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
    return Counter(node.op_type for node in graph.node)

"""What OpenVINO's CPU plugin compiled a file into: the precision each compute kernel runs in.

OpenVINO turns a QDQ pattern around a MatMul or Conv into an integer kernel when it can; this says whether it did
(``u8``/``i8``) or ran the layer in float (``f32``/``bf16``), e.g. mixq's dynamic files, whose
``DynamicQuantizeLinear`` + ``MatMulInteger`` OpenVINO computes in float.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

COMPUTE = ("FullyConnected", "Convolution", "GroupConvolution", "MatMul", "Deconvolution")


def kernel_precisions(session: Any) -> Counter[tuple[str, str]]:
    """``(layer type, runtime precision) -> count`` for the compute kernels of an ``OpenVINOSession``."""
    counts: Counter[tuple[str, str]] = Counter()
    for op in session.compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in COMPUTE:
            counts[kind, info["runtimePrecision"].astype(str)] += 1
    return counts


def integer_kernels(session: Any) -> int:
    """How many compute kernels of the session run in int8 (``u8`` or ``i8`` inputs)."""
    return sum(n for (_, precision), n in kernel_precisions(session).items() if precision in ("u8", "i8"))

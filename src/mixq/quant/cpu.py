"""What the local CPU means for int8 files: ONNX Runtime's x86 uint8 x int8 kernels without VNNI add pairs of
products in saturating 16-bit registers, so full 8-bit weights can overflow there and the file stops computing what
the simulation computes; 7-bit weights (``reduce_range=True``) cannot overflow."""

from __future__ import annotations

import functools
import platform
import sys

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (empty elsewhere): they decide ONNX Runtime's int8 and PyTorch's bf16
    kernels."""
    if not sys.platform.startswith("linux"):
        return frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def int8_needs_reduce_range() -> bool:
    """True on x86 CPUs with AVX2 but without VNNI, where ONNX Runtime's uint8 x int8 kernels saturate 8-bit weights
    (pass ``reduce_range=True`` to ``mixq.quantize``, or ``weight_bits=7`` to ``mixq.prepare_qat``)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    flags = cpu_flags()
    return "avx2" in flags and not (VNNI_FLAGS & flags)

"""The ONNX format and the ONNX Runtime runtime, registered with ``mixq.export.backend``.

Importing this module imports neither onnx nor onnxruntime; exporting, inspecting and opening sessions do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mixq.export.backend import Format, Runtime, named_feeds, register_format, register_runtime


@register_format
class OnnxFormat(Format):
    """``.onnx`` files written by ``mixq.export_onnx`` (or, with ``decoder=True``, ``mixq.export_decoder_onnx``)."""

    name, suffix, title, noun = "onnx", ".onnx", "ONNX", "an ONNX model"
    file_hint = "pass an ONNX model file, e.g. one written by mixq quantize or mixq.export_onnx"
    options = ("decoder", "opset", "softmax_floor")  # the CLI flags it takes (the export names outputs itself)

    def export(self, model: Any, example_inputs: Any, path: str | os.PathLike, *, decoder: bool = False,
               **options: Any) -> Path:
        if decoder:
            from mixq.export.onnx.decoder import export_decoder_onnx

            return export_decoder_onnx(model, path, opset=options.get("opset"), runtime=options.get("runtime"),
                                       softmax_floor=options.get("softmax_floor"))
        from mixq.export.onnx.export import export_onnx

        return export_onnx(model, example_inputs, path, **options)

    def inspect(self, path: str | os.PathLike) -> Any:
        from mixq.export.onnx.inspection import inspect_onnx

        return inspect_onnx(path)


@register_runtime
class OrtRuntime(Runtime):
    """ONNX Runtime's CPU execution provider."""

    package = "onnxruntime"
    name, format, title, short = "ort", "onnx", "ONNX Runtime", "ORT"
    times_kernels = True
    float_dtypes = ("float32",)  # the CPU provider computes float16 by casting to float32 (slower, not faster)

    def session(self, path: str | os.PathLike, threads: int | None = None) -> Any:
        """A CPU ``onnxruntime.InferenceSession``; with ``threads``, that many intra-op threads and one inter-op."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def input_names(self, session: Any) -> list[str]:
        return [i.name for i in session.get_inputs()]

    def feeds(self, session: Any, arrays: Mapping[str, Any] | Sequence[Any]) -> dict[str, np.ndarray]:
        return named_feeds(self.input_names(session), arrays)

    def run(self, session: Any, feeds: Any) -> list[np.ndarray]:
        return list(session.run(None, feeds))

    def floors_masked_softmax(self) -> bool:
        """Where the CPU computes denormals slowly (``mixq.export.onnx.softmax.underflow_is_slow``, once a process)."""
        from mixq.export.onnx.softmax import underflow_is_slow

        return underflow_is_slow()

    def time_kernel(self, kernel: Any, threads: int = 1) -> Any:
        """QLinearConv / MatMulIntegerToFloat / ConvInteger ... against Conv / MatMul (``kernel_timing``)."""
        from mixq.export.onnx.kernel_timing import time_kernel

        return time_kernel(kernel, threads)

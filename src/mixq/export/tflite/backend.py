"""The ``.tflite`` format and the LiteRT runtime (XNNPACK), registered with ``mixq.export.backend``.

Importing this module imports none of litert-torch, ai-edge-litert or ai-edge-quantizer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mixq.export.backend import Format, Runtime, file_runtime, ordered, register_format, register_runtime
from mixq.export.tflite.converter import INSTALL_HINT, litert_available


@register_format
class TFLiteFormat(Format):
    """``.tflite`` files written by ``mixq.export_tflite``."""

    name, suffix, title, noun = "tflite", ".tflite", "LiteRT", "a LiteRT file"
    file_hint = "pass a .tflite file, e.g. one written by mixq quantize --format tflite"
    options = ("io_dtype", "nhwc", "decoder")
    install_hint = INSTALL_HINT

    def available(self) -> bool:
        return litert_available()

    def export(self, model: Any, example_inputs: Any, path: str | os.PathLike, **options: Any) -> Path:
        file_runtime(model, self.name, options.pop("runtime", None))  # LiteRT is the only one: a check
        if options.pop("decoder", False):  # a causal LM with a key/value cache (export_decoder_tflite)
            from mixq.export.tflite.decoder import export_decoder_tflite

            return export_decoder_tflite(model, path)
        from mixq.export.tflite.export import export_tflite

        return export_tflite(model, example_inputs, path, **options)

    def inspect(self, path: str | os.PathLike) -> Any:
        from mixq.export.tflite.interpreter import inspect_tflite

        return inspect_tflite(path)


@register_runtime
class LiteRTRuntime(Runtime):
    """LiteRT's interpreter with the XNNPACK delegate (2 threads unless told otherwise)."""

    package = "ai-edge-litert"
    name, format, title = "litert", "tflite", "LiteRT"
    named_inputs = False
    install_hint = INSTALL_HINT
    rounds_float_output_rows = True
    smooths_every_group = True

    def available(self) -> bool:
        return litert_available()

    def stored_scales(self, scales: Any) -> Any:
        """Blockwise scales as the file stores them (bfloat16, ``weight_only.file_scale``); one scale per output
        channel stays float32."""
        from mixq.export.tflite.weight_only import file_scale

        return scales if scales.shape[-1] == 1 else file_scale(scales)

    def session(self, path: str | os.PathLike, threads: int | None = None) -> Any:
        from mixq.export.tflite.interpreter import LiteRTSession

        return LiteRTSession(path, threads)

    def input_names(self, session: Any) -> list[str]:
        return list(session.input_shapes)

    def feeds(self, session: Any, arrays: Mapping[str, Any] | Sequence[Any]) -> dict[int, np.ndarray]:
        values = ordered(self.input_names(session), arrays)
        return session.given_feeds([v.detach().numpy() if hasattr(v, "detach") else v for v in values])

    def batch_feeds(self, session: Any, batch: int) -> dict[int, np.ndarray]:
        return session.random_feeds(batch)

    def run(self, session: Any, feeds: Any) -> list[np.ndarray]:
        session.run(None, feeds)
        runner = session.runner
        return [runner._to_float(runner.interpreter.get_tensor(d["index"]), d) for d in runner.output_details]

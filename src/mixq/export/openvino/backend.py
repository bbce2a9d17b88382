"""OpenVINO's CPU plugin as a runtime for ``.onnx`` files, registered with ``mixq.export.backend``.

The same files ONNX Runtime runs (mixq's QDQ exports); OpenVINO reads the ONNX graph itself. Session option
``precision``: ``default`` (OpenVINO's choice, bf16 on CPUs with bf16 instructions), ``f32`` or ``bf16``, e.g.
``get_runtime("openvino:f32")``; the simulation check runs f32, the precision mixq's PyTorch modules compute in.
Importing this module imports no OpenVINO.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mixq.export.backend import Runtime, named_feeds, register_runtime
from mixq.export.openvino.session import INSTALL_HINT, PRECISIONS, OpenVINOSession


@register_runtime
class OpenVINORuntime(Runtime):
    """OpenVINO's CPU plugin (latency hint, ``precision`` default/f32/bf16)."""

    package = "openvino"
    name, format, title = "openvino", "onnx", "OpenVINO"
    install_hint = INSTALL_HINT
    options = {"precision": PRECISIONS}
    fuses_input_scale = True

    def available(self) -> bool:
        return importlib.util.find_spec("openvino") is not None

    def session(self, path: str | os.PathLike, threads: int | None = None) -> OpenVINOSession:
        """An :class:`OpenVINOSession` of ``path`` at the chosen precision (default: OpenVINO's)."""
        return OpenVINOSession(path, threads, self.chosen.get("precision", "default"))

    def variants(self) -> list[Runtime]:
        """f32 and OpenVINO's default precision (the same on CPUs without bf16; ``mixq bench`` shows it once)."""
        return [self.configured(precision="f32"), self.configured(precision="default")]

    def precision(self, session: Any) -> str | None:
        return session.precision_ran

    def kernel_counts(self, session: Any) -> dict[str, int]:
        from mixq.export.openvino.inspection import kernel_precisions

        return {f"{kind} {precision}": n for (kind, precision), n in sorted(kernel_precisions(session).items())}

    def input_names(self, session: Any) -> list[str]:
        return [i.name for i in session.get_inputs()]

    def feeds(self, session: Any, arrays: Mapping[str, Any] | Sequence[Any]) -> dict[str, np.ndarray]:
        return named_feeds(self.input_names(session), arrays)

    def run(self, session: Any, feeds: Any) -> list[np.ndarray]:
        return session.run(None, feeds)

    def check(self, model: Any, path: str | os.PathLike, example_inputs: Any) -> float:
        """Simulation vs OpenVINO, run in f32 whatever precision was chosen (bf16 would measure bf16's rounding)."""
        return Runtime.check(self.configured(precision="f32"), model, path, example_inputs)

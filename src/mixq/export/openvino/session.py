"""An OpenVINO compiled model behind ONNX Runtime's call shape: ``run(None, feeds)`` and ``get_inputs()``.

mixq's timing (``mixq.report.latency``) and input planning (``mixq.report.feeds``) call sessions that way; the
inputs are read from the ``.onnx`` file itself, so their symbolic axes keep their names (``batch``, ``sequence``),
which OpenVINO's compiled model does not.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

INSTALL_HINT = 'install the OpenVINO extra: pip install "mixq[openvino]"'
PRECISIONS = ("default", "f32", "bf16")  # "default": OpenVINO's own choice (bf16 on CPUs with bf16 instructions)


@dataclass(frozen=True)
class GraphValue:
    """One graph input as ONNX Runtime describes it: ``type`` like ``"tensor(float)"``, ``shape`` ints or names."""

    name: str
    type: str
    shape: list[int | str | None]


def onnx_inputs(path: str | os.PathLike) -> list[GraphValue]:
    """The inputs of the ONNX file at ``path`` (initializers excluded), read without its weights."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {t.name for t in graph.initializer}
    values = []
    for value in graph.input:
        if value.name in constants:
            continue
        tensor = value.type.tensor_type
        kind = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
        values.append(GraphValue(value.name, f"tensor({kind})", dims))
    return values


class OpenVINOSession:
    """``path`` compiled for OpenVINO's CPU plugin with ``threads`` inference threads (None: OpenVINO's choice),
    the latency performance hint (one request at a time, as mixq times and checks files) and ``precision``
    (``"default"``, ``"f32"`` or ``"bf16"``: OpenVINO's ``INFERENCE_PRECISION_HINT``, which on CPUs with bf16
    instructions defaults to bf16). ``precision_ran`` is the precision OpenVINO reports it compiled for."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, precision: str = "default") -> None:
        import openvino as ov

        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision != "default":
            config["INFERENCE_PRECISION_HINT"] = precision
        self.path, self.inputs = str(path), onnx_inputs(path)
        self.compiled = ov.Core().compile_model(self.path, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision_ran = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def get_inputs(self) -> list[GraphValue]:
        return list(self.inputs)

    def run(self, output_names: None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """One synchronous inference; the outputs in the file's order."""
        results = self.request.infer(dict(feeds))
        return [np.asarray(results[output]) for output in self.compiled.outputs]

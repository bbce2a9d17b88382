"""Measuring candidate models where they will run: exported to ONNX and timed on ONNX Runtime on this machine.

Latency is the median of ``runs`` calls per model on ``example_inputs`` with one intra-op thread (steadier than
several on a shared machine). Models compared against each other are timed in interleaved rounds, so drift in the
machine's load affects them alike. Size is the exported ONNX file's size in bytes.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq.auto.latency import Comparison, paired
from mixq.export import export_onnx


@dataclass(frozen=True)
class Measurement:
    """Latency (ms, median) and ONNX file size (bytes) of one exported model."""

    latency_ms: float
    size_bytes: int


def _feeds(session: Any, example_inputs: Any) -> dict[str, Any]:
    names = [i.name for i in session.get_inputs()]
    if isinstance(example_inputs, dict):
        values = [example_inputs[n] for n in names] if set(names) <= set(example_inputs) else list(
            example_inputs.values())
    elif isinstance(example_inputs, torch.Tensor):
        values = [example_inputs]
    else:
        values = list(example_inputs)
    return {n: v.detach().numpy() for n, v in zip(names, values, strict=False)}


class OrtMeter:
    """Exports models to a private temporary folder and times them on ONNX Runtime's CPU provider.

    Example: ``with OrtMeter(x) as meter: fp32, int8 = meter.measure({"fp32": model, "int8": qmodel}).values()``.
    """

    def __init__(self, example_inputs: Any, runs: int = 40, rounds: int = 4, threads: int = 1) -> None:
        self.example_inputs = example_inputs
        self.runs, self.rounds, self.threads = runs, rounds, threads
        self._tmp = tempfile.TemporaryDirectory(prefix="mixq-autoquant-")
        self.exports = 0
        self.export_s = 0.0
        self._paths: dict[str, Path] = {}

    @property
    def folder(self) -> Path:
        """The private temporary folder exports go to."""
        return Path(self._tmp.name)

    def compare(self, a: str, b: str) -> Comparison:
        """Paired, interleaved timing of two models already exported under labels ``a`` and ``b``."""
        runs = []
        for label in (a, b):
            session = self._session(self._paths[label])
            feeds = _feeds(session, self.example_inputs)
            runs.append(lambda s=session, f=feeds: s.run(None, f))
        return paired(runs[0], runs[1], calls=3)

    def _session(self, path: Path) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = self.threads, 1
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __enter__(self) -> OrtMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()

    def export(self, model: nn.Module, label: str) -> Path:
        """Export ``model`` once per ``label`` (a label measured again reuses its file)."""
        if label not in self._paths:
            start = time.perf_counter()
            self._paths[label] = export_onnx(model, self.example_inputs,
                                             Path(self._tmp.name) / f"m{self.exports}.onnx")
            self.exports += 1
            self.export_s += time.perf_counter() - start
        return self._paths[label]

    def measure(self, models: dict[str, nn.Module]) -> dict[str, Measurement]:
        """Export each model, then time them all in interleaved rounds (``mixq.report.measure_interleaved``)."""
        from mixq.report import measure_interleaved

        jobs, sizes = {}, {}
        for label, model in models.items():
            path = self.export(model, label)
            sizes[label] = path.stat().st_size
            session = self._session(path)
            jobs[label] = (session, _feeds(session, self.example_inputs))
        timed = measure_interleaved(jobs, self.runs, warmup=3, rounds=self.rounds)
        failed = next((r for r in timed.values() if isinstance(r, Exception)), None)
        if failed is not None:
            raise failed
        return {label: Measurement(timed[label].median_ms, sizes[label]) for label in models}  # type: ignore[union-attr]

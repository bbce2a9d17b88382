"""Measuring candidate models where they will run: exported and timed on a runtime (``mixq.export.backend``; ONNX
Runtime by default) on this machine.

Latency is the median of ``runs`` calls per model on ``example_inputs`` with one intra-op thread (steadier than
several on a shared machine). Models compared against each other are timed in interleaved rounds, so drift in the
machine's load affects them alike. Size is the exported file's size in bytes.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq.auto.latency import Comparison, paired
from mixq.export.backend import get_format, get_runtime


@dataclass(frozen=True)
class Measurement:
    """Latency (ms, median) and ONNX file size (bytes) of one exported model."""

    latency_ms: float
    size_bytes: int


class OrtMeter:
    """Exports models to a private temporary folder and times them on ``runtime`` (default ONNX Runtime's CPU
    provider).

    Example: ``with OrtMeter(x) as meter: fp32, int8 = meter.measure({"fp32": model, "int8": qmodel}).values()``.
    """

    def __init__(self, example_inputs: Any, runs: int = 40, rounds: int = 4, threads: int = 1,
                 runtime: str = "ort") -> None:
        self.example_inputs = example_inputs
        self.runtime = get_runtime(runtime)
        self.format = get_format(self.runtime.format)
        self.runs, self.rounds, self.threads = runs, rounds, threads
        self._tmp = tempfile.TemporaryDirectory(prefix="mixq-autoquant-")
        self.exports = 0
        self._paths: dict[str, Path] = {}

    @property
    def folder(self) -> Path:
        """The private temporary folder exports go to."""
        return Path(self._tmp.name)

    def compare(self, a: str, b: str) -> Comparison:
        """Paired, interleaved timing of two models already exported under labels ``a`` and ``b``."""
        runs = []
        for label in (a, b):
            session = self.runtime.session(self._paths[label], self.threads)
            feeds = self._feeds(session)
            runs.append(lambda s=session, f=feeds: s.run(None, f))
        return paired(runs[0], runs[1], calls=3)

    def _feeds(self, session: Any) -> Any:
        example = self.example_inputs
        return self.runtime.feeds(session, [example] if isinstance(example, torch.Tensor) else example)

    def __enter__(self) -> OrtMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()

    def export(self, model: nn.Module, label: str) -> Path:
        """Export ``model`` once per ``label`` (a label measured again reuses its file)."""
        if label not in self._paths:
            self._paths[label] = self.format.export(model, self.example_inputs,
                                                    Path(self._tmp.name) / f"m{self.exports}{self.format.suffix}")
            self.exports += 1
        return self._paths[label]

    def measure(self, models: dict[str, nn.Module]) -> dict[str, Measurement]:
        """Export each model, then time them all in interleaved rounds (``Runtime.measure``)."""
        jobs, sizes = {}, {}
        for label, model in models.items():
            path = self.export(model, label)
            sizes[label] = path.stat().st_size
            session = self.runtime.session(path, self.threads)
            jobs[label] = (session, self._feeds(session))
        timed = self.runtime.measure(jobs, self.runs, warmup=3, rounds=self.rounds)
        failed = next((r for r in timed.values() if isinstance(r, Exception)), None)
        if failed is not None:
            raise failed
        return {label: Measurement(timed[label].median_ms, sizes[label]) for label in models}  # type: ignore[union-attr]

"""Measuring candidate models where they will run: exported and timed on a runtime (``mixq.export.backend``; ONNX
Runtime by default) on this machine.

Latency is the median of ``runs`` calls per model on ``example_inputs`` with one intra-op thread (steadier than
several on a shared machine). Models compared against each other are timed in interleaved rounds, so drift in the
machine's load affects them alike. Size is the exported file's size in bytes.
"""

from __future__ import annotations

import math
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
                                                    Path(self._tmp.name) / f"m{self.exports}{self.format.suffix}",
                                                    runtime=self.runtime.label)
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


DEFAULT_DEPLOY_BATCHES = (1, 32)
MAX_DEPLOY_BATCH = 4096
MAX_DEPLOY_ELEMENTS = 1 << 26  # 64 M elements (256 MB of float32) across one deploy example's tensors


def _tensors(batch: Any) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (tuple, list)) else ()
    return [t for v in values for t in _tensors(v)]


def shape_label(batch: Any) -> str:
    """``1x128`` for a deploy example: the shape of its first tensor."""
    tensors = _tensors(batch)
    return "x".join(str(d) for d in tensors[0].shape) if tensors and tensors[0].dim() else "scalar"


def _resize(batch: Any, n: int) -> Any:
    """``batch`` with ``n`` rows on the batch axis (dim 0 of every tensor), repeating or slicing its rows."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 0:
            return batch  # no batch axis: the same for every batch size
        if batch.shape[0] == 0:
            raise ValueError(f"deploy_shapes as batch sizes needs example tensors with rows on dim 0, got shape "
                             f"{tuple(batch.shape)}; pass example inputs instead")
        reps = -(-n // batch.shape[0])
        return batch.repeat(reps, *([1] * (batch.dim() - 1)))[:n].clone()
    if isinstance(batch, dict):
        return {k: _resize(v, n) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_resize(v, n) for v in batch)
    return batch


def deploy_examples(example: Any, deploy_shapes: Any) -> list[tuple[str, Any]]:
    """The (label, example input) pairs to time at. ``deploy_shapes``: None (batch 1 and 32 built from ``example``),
    a list of batch sizes (``example`` repeated or sliced along dim 0 of every tensor, dicts and tuples alike) or a
    list of example inputs (used as given). Raises ValueError/TypeError in one line for anything else."""
    shapes = list(DEFAULT_DEPLOY_BATCHES) if deploy_shapes is None else _as_list(deploy_shapes)
    ints = [isinstance(s, int) and not isinstance(s, bool) for s in shapes]
    if all(ints):
        _check_batches(example, shapes)
        examples = [_resize(example, n) for n in shapes]
    elif any(ints):
        raise TypeError("deploy_shapes must be all batch sizes (ints) or all example inputs, not a mix")
    else:
        _check_examples(shapes)
        examples = shapes
    labels = [shape_label(e) for e in examples]
    if len(set(labels)) != len(labels):
        raise ValueError(f"deploy_shapes has repeated shapes: {', '.join(labels)}")
    return list(zip(labels, examples, strict=True))


def _as_list(deploy_shapes: Any) -> list[Any]:
    if not isinstance(deploy_shapes, (list, tuple)):
        raise TypeError(f"deploy_shapes must be a list of batch sizes or of example inputs, got "
                        f"{type(deploy_shapes).__name__}")
    if not deploy_shapes:
        raise ValueError("deploy_shapes must not be empty (omit it for batch 1 and 32)")
    return list(deploy_shapes)


def _check_batches(example: Any, batches: list[int]) -> None:
    """Batch sizes within bounds, not repeated, and an example they can be built from without a huge allocation."""
    bad = [s for s in batches if not 1 <= s <= MAX_DEPLOY_BATCH]
    if bad:
        raise ValueError(f"deploy_shapes batch sizes must be between 1 and {MAX_DEPLOY_BATCH}, got {bad[0]}")
    if len(set(batches)) != len(batches):
        raise ValueError(f"deploy_shapes has repeated batch sizes: {batches}")
    batched = [t for t in _tensors(example) if t.dim()]
    if not batched:
        raise ValueError("deploy_shapes as batch sizes needs an example input with tensors that have a batch "
                         "axis; pass example inputs instead")
    elements = sum(t.numel() // max(t.shape[0], 1) for t in batched) * max(batches)
    if elements > MAX_DEPLOY_ELEMENTS:
        raise ValueError(f"deploy_shapes batch {max(batches)} would build an example of {elements} elements "
                         f"(limit {MAX_DEPLOY_ELEMENTS}); use a smaller batch size")


def _check_examples(examples: list[Any]) -> None:
    """Each example input is a tensor or a dict/tuple/list holding at least one tensor."""
    for e in examples:
        if not isinstance(e, (torch.Tensor, dict, tuple, list)) or not _tensors(e):
            raise TypeError("deploy_shapes example inputs must be tensors, dicts, tuples or lists of tensors, got "
                            f"{type(e).__name__}")


class Meters:
    """One ``OrtMeter`` per deploy shape, used together: ``measure`` and ``compare`` answer per shape label."""

    def __init__(self, meters: dict[str, Any], examples: dict[str, Any]) -> None:
        self.meters, self.examples = meters, examples

    @classmethod
    def build(cls, make: Any, examples: list[tuple[str, Any]]) -> Meters:
        """``make(example) -> OrtMeter`` for each (label, example) of ``deploy_examples``."""
        return cls({label: make(example) for label, example in examples}, dict(examples))

    @property
    def labels(self) -> list[str]:
        return list(self.meters)

    def __enter__(self) -> Meters:
        for m in self.meters.values():
            m.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for m in self.meters.values():
            m.__exit__(*exc)

    @property
    def runtime(self) -> Any:
        """The runtime every meter times on (``mixq.export.backend.Runtime``)."""
        return next(iter(self.meters.values())).runtime

    def measure(self, models: dict[str, nn.Module]) -> dict[str, dict[str, Measurement]]:
        """label -> deploy shape -> measurement."""
        by_shape = {shape: meter.measure(models) for shape, meter in self.meters.items()}
        return {label: {shape: by_shape[shape][label] for shape in self.meters} for label in models}

    def compare(self, a: str, b: str) -> dict[str, Comparison]:
        return {shape: meter.compare(a, b) for shape, meter in self.meters.items()}


def mean_ratio(b_ms: list[float], a_ms: list[float]) -> float:
    """Mean over deploy shapes of ``b``'s time over ``a``'s."""
    return sum(b / a if a > 0 else math.inf for a, b in zip(a_ms, b_ms, strict=True)) / len(a_ms)

"""ONNX Runtime sessions and latency measurement (warm-up, then median and 90th percentile of timed runs)."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
                "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


@dataclass(frozen=True)
class Latency:
    """Timing of ``runs`` calls of one session on one batch size, in milliseconds."""

    batch: int
    median_ms: float
    p90_ms: float
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ort_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """A CPU ``onnxruntime.InferenceSession`` for ``path`` with ``threads`` intra-op threads (None: ORT's choice)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def random_feeds(session: Any, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for every graph input at batch size ``batch``: normal floats, zero integers.

    The first dimension is the batch; other symbolic dimensions are set to 1. Raises ``ValueError`` if the graph
    has a fixed first dimension different from ``batch``, or an input type this cannot synthesise.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in session.get_inputs():
        dtype = _NUMPY_TYPES.get(value.type)
        if dtype is None:
            raise ValueError(f"input {value.name!r} has type {value.type}, which mixq bench cannot generate")
        shape = [d if isinstance(d, int) else 1 for d in value.shape]
        if shape and isinstance(value.shape[0], int) and value.shape[0] != batch:
            raise ValueError(f"input {value.name!r} has a fixed batch size of {value.shape[0]}, not {batch}; "
                             "export with a dynamic batch dimension (mixq.export_onnx does by default)")
        if shape:
            shape[0] = batch
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[value.name] = np.zeros(shape, dtype=dtype)
    return feeds


def measure_latency(session: Any, feeds: dict[str, np.ndarray], runs: int = 50, warmup: int = 5) -> Latency:
    """Warm up, then time ``runs`` calls of ``session.run``; median and 90th percentile in milliseconds."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(warmup):
        session.run(None, feeds)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times[i] = (time.perf_counter() - start) * 1e3
    batch = next(iter(feeds.values())).shape[0] if feeds else 1
    return Latency(int(batch), float(np.median(times)), float(np.percentile(times, 90)), runs)

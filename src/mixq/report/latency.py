"""Latency measurement of any runtime's sessions (warm-up, then median and 90th percentile of timed runs; several
sessions side by side in interleaved rounds). Sessions come from ``mixq.export.backend`` (``ort_session`` is ONNX
Runtime's, kept for callers of ``mixq.report``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)
# Interleaved timing switches between sessions, and each session's idle threads spin-wait for a while after a call
# (ONNX Runtime's default): for the next session's first calls they compete for the cores. On 2 cores a 1.8 ms
# fp32 CNN call measured 6-7 ms right after another session's calls. Before a job's calls in a round, mixq waits
# this long (the other threads park) and makes one untimed call (its own threads wake), which gives the numbers a
# session alone in its process gives (within 5-10%, /work/dbg19b/cnntime4.py).
SETTLE_S = 0.02
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
    """A CPU ``onnxruntime.InferenceSession`` for ``path`` with ``threads`` intra-op threads (None: ORT's choice):
    ``mixq.export.backend.get_runtime("ort").session``."""
    from mixq.export.backend import get_runtime

    return get_runtime("ort").session(path, threads)


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


def settle(session: Any, feeds: Any) -> None:
    """Let other sessions' spinning threads park, then wake ``session``'s own with one untimed call (see
    ``SETTLE_S``); call it before timing a session right after another one ran."""
    time.sleep(SETTLE_S)
    session.run(None, feeds)


def measure_interleaved(jobs: Mapping[K, tuple[Any, Mapping[Any, np.ndarray]]],
                        runs: int | Callable[[dict[K, float]], int] = 50, warmup: int = 5, rounds: int = 5, *,
                        tick: Callable[[], object] | None = None) -> dict[K, Latency | Exception]:
    """Time several ``(session, feeds)`` jobs side by side: warm each up, then ``rounds`` rounds that each run every
    job in turn (``runs`` timed calls per job in all), so machine load and clock drift hit every job alike. With
    several jobs each job's calls in a round follow :func:`settle` (a pause and one untimed call), so one job's
    spin-waiting threads do not slow the next one down.

    A job whose warm-up or a timed call raises maps to that exception (the others are timed on); the rest map to
    their median and 90th-percentile latency. ``runs`` may be a function that picks the count after the warm-up,
    given the seconds of each warmed-up job's last warm-up call (none when ``warmup`` is 0). ``tick`` (e.g. a
    progress bar's) is called after every call, warm-up or timed, outside the timed span.
    """
    if not callable(runs) and runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    results: dict[K, Latency | Exception] = {}
    live = {}
    warm: dict[K, float] = {}
    for key, (session, feeds) in jobs.items():
        try:
            for _ in range(warmup):
                start = time.perf_counter()
                session.run(None, feeds)
                warm[key] = time.perf_counter() - start
                if tick is not None:
                    tick()
        except Exception as err:  # reported per job
            results[key] = err
            warm.pop(key, None)
        else:
            live[key] = (session, feeds)
    if callable(runs):
        runs = runs(warm)
        if runs < 1:
            raise ValueError(f"runs must be >= 1, got {runs}")
    times: dict[K, list[float]] = {key: [] for key in live}
    rounds = max(1, min(rounds, runs))
    for r in range(rounds):
        calls = runs // rounds + (r < runs % rounds)
        for key, (session, feeds) in list(live.items()):
            try:
                if len(live) > 1:
                    settle(session, feeds)
                for _ in range(calls):
                    start = time.perf_counter()
                    session.run(None, feeds)
                    times[key].append((time.perf_counter() - start) * 1e3)
                    if tick is not None:
                        tick()
            except Exception as err:  # reported per job
                results[key] = err
                del live[key]
    for key, (_, feeds) in live.items():
        batch = next(iter(feeds.values())).shape[0] if feeds else 1
        results[key] = Latency(int(batch), float(np.median(times[key])), float(np.percentile(times[key], 90)), runs)
    return {key: results[key] for key in jobs}


def probe(jobs: Mapping[K, tuple[Any, Any]], tick: Callable[[], object] | None = None) -> dict[K, float | Exception]:
    """One call of each ``(session, feeds)`` job, timed: its seconds (a first call, so likely on the slow side), or
    the exception it raised."""
    seconds: dict[K, float | Exception] = {}
    for key, (session, feeds) in jobs.items():
        start = time.perf_counter()
        try:
            session.run(None, feeds)
        except Exception as err:  # reported per job
            seconds[key] = err
        else:
            seconds[key] = time.perf_counter() - start
        if tick is not None:
            tick()
    return seconds


def runs_within(seconds: float, per_run: float, floor: int, cap: int) -> int:
    """How many runs of ``per_run`` seconds fit ``seconds``: between ``floor`` and ``cap``; ``floor`` even when that
    does not fit (the caller says so)."""
    if floor < 1 or cap < floor:
        raise ValueError(f"need 1 <= floor <= cap, got floor={floor}, cap={cap}")
    fit = int(seconds // per_run) if per_run > 0 else cap
    return max(floor, min(cap, fit))

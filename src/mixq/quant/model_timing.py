"""Whole-model check of runtime-aware precision: the layers one-op timing finds slower in int8 stay float only if the
whole file runs faster with them float, in the runtime, on this machine.

One-op timing (``mixq.quant.runtime_precision``) prices a layer's two forms alone. In a whole graph the runtime
fuses, lays out and schedules ops in ways a one-op graph can miss: EfficientNet-Lite0's 3-channel stem conv timed
1.1-1.7x slower in int8 alone at 2 threads (a tie at 1), yet its file ran no faster with the stem float. And a float
layer among int8 ones costs bit-exact simulation (its float kernel rounds differently in each runtime, and the int8
codes after it amplify that: that file agreed with its simulation on 0.96 of the argmaxes instead of 1.000). So the
candidates are checked together: both files are exported and timed side by side (interleaved rounds, medians), and
the candidates stay float only when the file with them float is faster by more than ``FASTER_MARGIN``. The result
is cached with the kernel costs (keyed by the model's layer shapes and the candidates), so a model quantizes the
same way on every run on this machine.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mixq.quant.calibration import Batch
from mixq.quant.conversion import convert_prepared
from mixq.quant.runtime_costs import Kernel, KernelCost
from mixq.quant.stages import Prepared

# the file with the candidates float must be this much faster: identical files timed side by side differ by 1-2 %
FASTER_MARGIN = 1.03
THREADS = 1  # as the kernels are timed (``KernelCosts`` records it): the quietest, most repeatable measurement
TIMING_S = 3.0  # seconds of timed calls per file, split over interleaved rounds
# larger models are not checked (two more exports would take minutes and their memory): the one-op verdict stands
MAX_PARAMETERS = 150_000_000


def model_key(kernels: Mapping[str, Kernel], candidates: Mapping[str, str]) -> str:
    """The cache key of one model's check: every timed layer's name and kernel, and which of them are candidates."""
    text = "|".join(f"{name}={kernels[name].key}" for name in sorted(kernels)) + "#" + ",".join(sorted(candidates))
    return "model " + hashlib.sha256(text.encode()).hexdigest()[:16]


def time_variants(prepared: Prepared, keep_float: Mapping[str, str], candidates: Mapping[str, str],
                  example: Batch, runtime_name: str) -> KernelCost:
    """Milliseconds per call of the model's file with ``candidates`` float (``float_ms``) and without them
    (``int8_ms``), both with ``keep_float`` float, exported for ``runtime_name`` and timed there on ``example``."""
    from mixq.export.backend import get_format, get_runtime
    from mixq.report.latency import measure_interleaved, runs_within

    runtime = get_runtime(runtime_name)
    fmt = get_format(runtime.format)
    jobs: dict[str, tuple[Any, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="mixq-model-timing-") as tmp:
        for label, kept in (("int8", dict(keep_float)), ("float", {**keep_float, **candidates})):
            qmodel = convert_prepared(prepared, keep_float=kept)
            path = fmt.export(qmodel, example, Path(tmp) / f"{label}{fmt.suffix}", runtime=runtime_name)
            session = runtime.session(path, threads=THREADS)
            jobs[label] = (session, runtime.example_feeds(session, example))
        start = time.perf_counter()
        for session, feeds in jobs.values():
            session.run(None, feeds)
        per_run = (time.perf_counter() - start) / len(jobs)
        times = measure_interleaved(jobs, runs_within(TIMING_S, per_run, floor=6, cap=400), warmup=2, rounds=6)
    return KernelCost(times["float"].median_ms, times["int8"].median_ms)


def too_large(prepared: Prepared) -> int | None:
    """The model's parameter count when it is over ``MAX_PARAMETERS`` (too large to export twice), else None."""
    count = sum(p.numel() for p in prepared.model.parameters())
    return count if count > MAX_PARAMETERS else None


def faster_with_float(cost: KernelCost) -> bool:
    """True when the file with the candidates float ran faster than the all-int8 one by more than the margin."""
    return cost.float_ms * FASTER_MARGIN < cost.int8_ms

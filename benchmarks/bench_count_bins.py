"""Histogram calibration with this tree's ``count_bins`` against a baseline ``count_bins``, interleaved in one process.

Usage::

    git show main:src/mixq/quant/observers/binning.py > /tmp/binning_main.py
    PYTHONPATH=src .venv/bin/python benchmarks/bench_count_bins.py /tmp/binning_main.py
    PYTHONPATH=src .venv/bin/python benchmarks/bench_count_bins.py /tmp/binning_main.py --threads 1
    PYTHONPATH=src .venv/bin/python benchmarks/bench_count_bins.py /tmp/binning_main.py --count-bins-only

The models, batches and ``prepare`` are ``bench_calibration.py``'s. Each round times one plain fp32 forward and one
calibration batch per histogram observer with each ``count_bins`` (the histogram module's name swapped between
calls), in rotating order, so machine load hits every variant alike; reported are the medians of the per-round
ratios to the forward. ``--count-bins-only`` times just the ``count_bins`` calls of one calibration batch (the
tensors and ranges the percentile observers saw), without the forward around them, whose time swings on a loaded
machine; reported are the milliseconds per batch and the median per-round ratio to the baseline. Before timing,
both must give identical counts on every call, and for a calibration identical histograms and (scale, zero point)
for every observer on the same batches, or the script stops. The CPU flags, threads and load are printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_calibration import FLAGS, workloads

import mixq.quant.observers.histogram as histogram_module
from mixq.quant.calibration import call_model
from mixq.quant.cpu import cpu_flags
from mixq.quant.observers.histogram import HistogramObserver
from mixq.quant.spec import QuantConfig
from mixq.quant.stages import Prepared, calibrate, prepare

HISTOGRAM_OBSERVERS = {"CNN": ("percentile", "mse", "entropy"), "BERT": ("percentile",)}


def load_count_bins(path: Path) -> Callable:
    """``count_bins`` from a ``binning.py`` file (the baseline)."""
    spec = importlib.util.spec_from_file_location("baseline_binning", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}: pass a binning.py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module.count_bins


def statistics_of(prepared: Prepared) -> list[torch.Tensor]:
    """Every histogram observer's histogram, zero count and qparams."""
    out = []
    for m in prepared.model.modules():
        if isinstance(m, HistogramObserver) and m.has_data:
            out += [m.histogram.clone(), m.zero_count.clone(), *m.calculate_qparams()]
    return out


def check_identical(model: torch.nn.Module, data: list, name: str, variants: dict[str, Callable]) -> None:
    """Calibrate a fresh prepared model with each ``count_bins`` on the same batches; stop on any difference."""
    results = {}
    for tag, count_bins in variants.items():
        histogram_module.count_bins = count_bins
        prepared = prepare(model, QuantConfig.from_options("static", observer=name), data[0])
        calibrate(prepared, data, progress=False)
        results[tag] = statistics_of(prepared)
    first, *others = results.values()
    for other in others:
        if len(other) != len(first) or not all(torch.equal(a, b) for a, b in zip(first, other, strict=True)):
            raise SystemExit(f"{name}: the two count_bins give different statistics; timings would compare "
                             "different work")


def measure(label: str, build: Callable, batch: Callable, variants: dict[str, Callable], rounds: int) -> dict:
    model = build()
    data = [batch(i) for i in range(4)]
    names = HISTOGRAM_OBSERVERS["CNN" if "CNN" in label else "BERT"]
    timed: dict[str, tuple[Callable | None, Callable]] = {"fp32 forward": (None, lambda b: call_model(model, b))}
    for name in names:
        check_identical(model, data, name, variants)
        prepared = prepare(model, QuantConfig.from_options("static", observer=name), data[0])
        calibrate(prepared, data[:2], progress=False)  # warm up, ranges set
        for tag, count_bins in variants.items():
            timed[f"{name}, {tag}"] = (count_bins, lambda b, p=prepared: calibrate(p, [b], progress=False))
    times: dict[str, list[float]] = {k: [] for k in timed}
    keys = list(timed)
    with torch.no_grad():
        for r in range(rounds):
            b = data[r % len(data)]
            for k in keys[r % len(keys):] + keys[:r % len(keys)]:
                count_bins, run = timed[k]
                if count_bins is not None:
                    histogram_module.count_bins = count_bins
                start = time.perf_counter()
                run(b)
                times[k].append(time.perf_counter() - start)
    fwd = times["fp32 forward"]
    return {k: (statistics.median(v) * 1e3, statistics.median([t / f for t, f in zip(v, fwd, strict=True)]))
            for k, v in times.items()}


def measure_count_bins(label: str, build: Callable, batch: Callable, variants: dict[str, Callable],
                       rounds: int) -> dict:
    """Each ``count_bins`` on the calls one percentile calibration batch makes, interleaved."""
    model = build()
    data = [batch(i) for i in range(3)]
    prepared = prepare(model, QuantConfig.from_options("static", observer="percentile"), data[0])
    calibrate(prepared, data[:2], progress=False)
    calls = []
    current = histogram_module.count_bins

    def record(*args: object) -> object:
        calls.append(args)
        return current(*args)

    histogram_module.count_bins = record
    calibrate(prepared, data[2:], progress=False)
    histogram_module.count_bins = current
    for args in calls:
        (counts, zeros), *others = (count_bins(*args) for count_bins in variants.values())
        if not all(torch.equal(counts, c) and zeros == z for c, z in others):
            raise SystemExit(f"{label}: the two count_bins count differently; timings would compare different work")
    times: dict[str, list[float]] = {k: [] for k in variants}
    keys = list(variants)
    for r in range(rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            start = time.perf_counter()
            for args in calls:
                variants[k](*args)
            times[k].append(time.perf_counter() - start)
    base = times["baseline"]
    return {k: (statistics.median(v) * 1e3, statistics.median([t / b for t, b in zip(v, base, strict=True)]))
            for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", type=Path, help="a binning.py whose count_bins is the baseline")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--count-bins-only", action="store_true", help="time only the count_bins calls")
    args = parser.parse_args(argv)
    if not args.baseline.is_file():
        parser.error(f"{args.baseline} is not a file; write one with git show main:src/mixq/quant/observers/"
                     "binning.py > FILE")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    variants = {"this tree": histogram_module.count_bins, "baseline": load_count_bins(args.baseline)}
    load_before = os.getloadavg()[0]
    print(f"CPU flags: {sorted(cpu_flags() & set(FLAGS))}; torch threads {torch.get_num_threads()}; "
          f"load average {load_before:.1f}", file=sys.stderr)
    for label, (build, batch, _) in workloads(quick=False).items():
        if args.count_bins_only:
            rows, versus = measure_count_bins(label, build, batch, variants, args.rounds), "vs baseline"
        else:
            rows, versus = measure(label, build, batch, variants, args.rounds), "vs fp32 forward"
        print(f"\n**{label}** (load average {os.getloadavg()[0]:.1f})\n\n| variant | ms/batch | {versus} |\n"
              "|---|---:|---:|")
        for k, (ms, ratio) in rows.items():
            print(f"| {k} | {ms:.1f} | {ratio:.2f}x |")
    print(f"\nthreads {torch.get_num_threads()}, load average before/after: {load_before:.1f} / "
          f"{os.getloadavg()[0]:.1f}, {args.rounds} interleaved rounds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

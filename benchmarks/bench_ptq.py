"""Post-training quantization benchmark: mixq static/dynamic int8 vs ONNX Runtime's own quantizer.

For a ResNet-18-shaped CNN and a MiniLM-sized BERT encoder (random weights), measures latency (median and p90 of
timed runs after warm-up, 2 threads) and file size of: PyTorch fp32 eager, ORT fp32, mixq static and dynamic int8
exported to ONNX and run in ORT, and ``onnxruntime.quantization.quantize_static`` / ``quantize_dynamic`` applied to
the same fp32 ONNX file. Writes ``ptq.json`` (every number) and ``ptq.md`` (rendered from the JSON) under ``--out``.

Usage::

    .venv/bin/python benchmarks/bench_ptq.py            # full run, about 10-15 minutes on 2 cores
    .venv/bin/python benchmarks/bench_ptq.py --quick    # smoke test: small shapes, few runs
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ptq_models  # noqa: E402
import ptq_report  # noqa: E402

import mixq  # noqa: E402
from mixq.export import FLOAT_COMPUTE, INTEGER_KERNELS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
THREADS = 2
VARIANTS = ("pytorch_fp32", "ort_fp32", "mixq_static", "mixq_dynamic", "ort_static", "ort_dynamic")


@dataclass
class Settings:
    """Shapes and run counts for one invocation (full or ``--quick``)."""

    quick: bool
    models: list[str]
    batches: list[int]
    warmup: int
    runs: int | None  # None: 50 at batch 1, 30 above (keeps batch 32 bounded)
    image: int
    seq_len: int
    calib_batches: int
    calib_batch_size: int
    eval_samples: int

    def runs_for(self, batch: int) -> int:
        if self.runs is not None:
            return self.runs
        return 50 if batch == 1 else 30


@dataclass
class Variant:
    """One way of running a model: eager PyTorch or an ONNX file in an ORT session."""

    name: str
    path: Path | None = None
    size_bytes: int | None = None
    session: Any = None
    input_names: list[str] = field(default_factory=list)
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


def session_options() -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def open_session(variant: Variant) -> None:
    import onnxruntime as ort

    if variant.path is None:
        raise ValueError(f"{variant.name} has no ONNX file")
    variant.session = ort.InferenceSession(str(variant.path), session_options(), providers=["CPUExecutionProvider"])
    variant.input_names = [i.name for i in variant.session.get_inputs()]
    variant.size_bytes = variant.path.stat().st_size
    ops = mixq.optimized_op_types(variant.path)
    compute = {k: n for k, n in ops.items() if k in INTEGER_KERNELS or k in FLOAT_COMPUTE}
    variant.info["int_kernels"] = sum(n for k, n in ops.items() if k in INTEGER_KERNELS)
    variant.info["float_ops"] = sum(n for k, n in ops.items() if k in FLOAT_COMPUTE)
    variant.info["compute_ops"] = compute
    variant.info["all_ops"] = dict(sorted(ops.items()))


def short_error(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    return text if len(text) <= 400 else text[:400] + " ..."


def attempt(variant: Variant, build: Callable[[], None], log: logging.Logger) -> None:
    """Run ``build``; on failure keep the variant with its error instead of stopping the benchmark."""
    start = time.perf_counter()
    try:
        build()
        open_session(variant)
    except Exception as err:  # recorded in the report, the benchmark goes on
        variant.error = short_error(err)
        variant.session = None
        log.warning("%s failed: %s", variant.name, variant.error)
        log.debug("%s", traceback.format_exc())
    variant.info["build_s"] = round(time.perf_counter() - start, 2)


class Reader:
    """``CalibrationDataReader`` over the same batches mixq calibrates on."""

    def __init__(self, batches: list[ptq_models.Batch], input_names: list[str]) -> None:
        self.feeds = [ptq_models.to_feeds(b, input_names) for b in batches]
        self.it: Iterator[dict[str, np.ndarray]] = iter(self.feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)

    def rewind(self) -> None:
        self.it = iter(self.feeds)


def ort_quantize(kind: str, fp32: Path, out: Path, calib: list[ptq_models.Batch], input_names: list[str],
                 variant: Variant, tmp: Path) -> None:
    """ORT's quantize_static (QDQ, U8 activations, S8 per-channel weights, MinMax) or quantize_dynamic (S8
    per-channel); on failure retry once on the ``quant_pre_process``-ed file and record that it was needed."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(Reader, CalibrationDataReader):
        pass

    def run(source: Path) -> None:
        if kind == "dynamic":
            quantize_dynamic(source, out, weight_type=QuantType.QInt8, per_channel=True)
        else:
            quantize_static(source, out, _Reader(calib, input_names), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            calibrate_method=CalibrationMethod.MinMax)

    try:
        run(fp32)
        variant.info["pre_processed"] = False
    except Exception as first:
        variant.info["direct_error"] = short_error(first)
        pre = tmp / f"{fp32.stem}_pre.onnx"
        if not pre.exists():
            quant_pre_process(str(fp32), str(pre))
        run(pre)
        variant.info["pre_processed"] = True
        variant.info["note"] = "needed quant_pre_process"


BLOCK = 5  # consecutive timed runs of one variant before moving on to the next
QUIET_SHARE = 0.15  # wait before a block while other processes use more than this share of the machine's CPUs
QUIET_WAIT_S = 20.0  # ... but never longer than this per block


@dataclass
class CpuSample:
    """Machine-wide busy CPU seconds and this process's own CPU seconds at one instant (Linux /proc/stat)."""

    busy_s: float
    own_s: float
    wall_s: float

    @classmethod
    def now(cls) -> CpuSample:
        try:
            with open("/proc/stat") as f:
                ticks = [int(v) for v in f.readline().split()[1:9]]
            busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            busy = float("nan")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(busy, usage.ru_utime + usage.ru_stime, time.perf_counter())

    def others_share(self, later: CpuSample) -> float:
        """Share of all CPUs used by other processes between ``self`` and ``later`` (0 = machine was ours)."""
        wall = later.wall_s - self.wall_s
        others = (later.busy_s - self.busy_s) - (later.own_s - self.own_s)
        return max(0.0, others / (wall * (os.cpu_count() or 1))) if wall > 0 else 0.0


def wait_for_quiet() -> float:
    """Wait (up to ``QUIET_WAIT_S``) until other processes leave the CPUs mostly idle; returns seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < QUIET_WAIT_S:
        a = CpuSample.now()
        time.sleep(0.5)
        if a.others_share(CpuSample.now()) < QUIET_SHARE:
            break
    return time.perf_counter() - start


def time_interleaved(fns: dict[str, Callable[[], Any]], warmup: int, runs: int) -> dict[str, dict[str, float]]:
    """Warm every variant up, then time them in round-robin blocks of ``BLOCK`` consecutive runs.

    Interleaving spreads background load (this is a shared 2-core machine) evenly over the variants being compared.
    Before each block the benchmark waits briefly for the other processes to go quiet, and it records the share of
    the CPUs they used during each variant's timed runs (``others_cpu_share``) so contended rows are visible.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    busy: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    waited = 0.0
    while any(len(t) < runs for t in times.values()):
        for name, fn in fns.items():
            n = min(BLOCK, runs - len(times[name]))
            if n == 0:
                continue
            waited += wait_for_quiet()
            before = CpuSample.now()
            for _ in range(n):
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1e3)
            after = CpuSample.now()
            busy[name].append((before.others_share(after), after.wall_s - before.wall_s))
    out = {}
    for name, t in times.items():
        share = sum(s * w for s, w in busy[name]) / max(sum(w for _, w in busy[name]), 1e-9)
        out[name] = {"median_ms": statistics.median(t), "p90_ms": float(np.percentile(t, 90)), "min_ms": min(t),
                     "runs": len(t), "others_cpu_share": round(share, 3), "quiet_wait_s": round(waited, 1)}
    return out


def eager_call(model: torch.nn.Module, batch: ptq_models.Batch) -> torch.Tensor:
    with torch.inference_mode():
        return model(**batch) if isinstance(batch, dict) else model(batch)


def export_fp32(wl: ptq_models.Workload, example: ptq_models.Batch, variant: Variant, tmp: Path) -> None:
    """``mixq.export_onnx`` on the float model, then onnxscript's constant folding.

    mixq exports with ``torch.onnx.export(..., optimize=False)``; for a bias-free Conv the raw graph then computes
    a zero bias at run time (Shape/Expand/CastLike), so ORT can neither fold the BatchNorm into the Conv nor quantize
    the Conv (its quantizer needs initializer biases). Folding those constants restores the graph an ordinary
    exporter produces, so ORT fp32 and ORT's quantizers start from a fair file. The raw file's op counts are kept.
    """
    import onnx
    import onnxscript.optimizer

    raw = tmp / f"{wl.name}_fp32_raw.onnx"
    mixq.export_onnx(wl.model, example, raw)
    raw_ops = mixq.optimized_op_types(raw)
    variant.info["raw_export_ops"] = dict(sorted(raw_ops.items()))
    variant.info["raw_export_mb"] = raw.stat().st_size / 1e6
    model = onnxscript.optimizer.optimize(onnx.load(raw))
    onnx.save(model, variant.path)
    variant.info["note"] = "mixq.export_onnx + onnxscript.optimizer.optimize (constant folding)"


def build_variants(wl: ptq_models.Workload, s: Settings, tmp: Path, log: logging.Logger) -> dict[str, Variant]:
    calib = [wl.batch(s.calib_batch_size, seed=100 + i, padded=True) for i in range(s.calib_batches)]
    example = wl.batch(1, seed=7)
    variants = {name: Variant(name) for name in VARIANTS}
    sd = wl.model.state_dict()
    variants["pytorch_fp32"].size_bytes = sum(t.numel() * t.element_size() for t in sd.values())

    fp32 = variants["ort_fp32"]
    fp32.path = tmp / f"{wl.name}_fp32.onnx"
    attempt(fp32, lambda: export_fp32(wl, example, fp32, tmp), log)
    if fp32.error:  # nothing to quantize with ORT, nothing to compare against
        for name in VARIANTS[2:]:
            variants[name].error = "fp32 ONNX export failed"
        return variants

    for mode in ("static", "dynamic"):
        v = variants[f"mixq_{mode}"]
        v.path = tmp / f"{wl.name}_mixq_{mode}.onnx"

        def build(v: Variant = v, mode: str = mode) -> None:
            log.info("%s: mixq.quantize(%r)", wl.name, mode)
            kwargs: dict[str, Any] = {"calib_data": calib, "observer": "minmax"} if mode == "static" else {
                "example_inputs": example}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q = mixq.quantize(wl.model, mode, progress=False, **kwargs)
            summary = q.mixq_summary
            v.info["layers_quantized"] = len(summary.quantized)
            v.info["layers_float"] = len(summary.skipped)
            v.info["float_layers"] = sorted({f"{r.kind}: {r.detail}" for r in summary.skipped})
            log.info("%s: exporting mixq %s", wl.name, mode)
            mixq.export_onnx(q, example, v.path)

        attempt(v, build, log)

    for mode in ("static", "dynamic"):
        v = variants[f"ort_{mode}"]
        v.path = tmp / f"{wl.name}_ort_{mode}.onnx"
        log.info("%s: onnxruntime quantize_%s", wl.name, mode)
        attempt(v, lambda v=v, mode=mode: ort_quantize(mode, fp32.path, v.path, calib, fp32.input_names, v, tmp), log)
    return variants


def accuracy(wl: ptq_models.Workload, variants: dict[str, Variant], s: Settings) -> dict[str, float | None]:
    batch = wl.batch(s.eval_samples, seed=4242)
    ref = eager_call(wl.model, batch).numpy()
    out: dict[str, float | None] = {"pytorch_fp32": ptq_models.accuracy_proxy(wl.name, ref, ref)}
    for name, v in variants.items():
        if v.session is not None:
            (res, *_) = v.session.run(None, ptq_models.to_feeds(batch, v.input_names))
            out[name] = ptq_models.accuracy_proxy(wl.name, res, ref)
    return out


def bench_model(wl: ptq_models.Workload, s: Settings, tmp: Path, log: logging.Logger
                ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    variants = build_variants(wl, s, tmp, log)
    acc = accuracy(wl, variants, s)
    rows: list[dict[str, Any]] = []
    for batch_size in s.batches:
        batch = wl.batch(batch_size, seed=batch_size)
        runs = s.runs_for(batch_size)
        fns: dict[str, Callable[[], Any]] = {"pytorch_fp32": lambda batch=batch: eager_call(wl.model, batch)}
        for name, v in variants.items():
            if v.session is not None:
                feeds = ptq_models.to_feeds(batch, v.input_names)
                fns[name] = lambda v=v, feeds=feeds: v.session.run(None, feeds)
        log.info("%s batch %d: timing %s, %d warm-up + %d runs each", wl.name, batch_size, ", ".join(fns), s.warmup,
                 runs)
        stats = time_interleaved(fns, s.warmup if batch_size < 32 else min(s.warmup, 3), runs)
        timed: dict[str, dict[str, Any]] = {}
        for name, v in variants.items():
            row: dict[str, Any] = {"model": wl.name, "batch": batch_size, "variant": name, "error": v.error}
            row.update(stats.get(name, {}))
            row["size_mb"] = None if v.size_bytes is None or v.error else v.size_bytes / 1e6
            row["accuracy"] = acc.get(name)
            row["int_kernels"] = v.info.get("int_kernels")
            row["float_ops"] = v.info.get("float_ops")
            timed[name] = row
        ref = timed["ort_fp32"]
        for name, row in timed.items():
            row["size_ratio"] = _ratio(row.get("size_mb"), ref.get("size_mb"))
            row["latency_ratio"] = _ratio(row.get("median_ms"), ref.get("median_ms"))
            if name in ptq_report.COUNTERPART:
                other = timed[ptq_report.COUNTERPART[name]]
                row["ratio_vs_ort_quantizer"] = _ratio(row.get("median_ms"), other.get("median_ms"))
            rows.append(row)
            log.info("  %-13s b=%-3d median %s ms", name, batch_size, _ms(row.get("median_ms")))
    summary = {name: {"error": v.error, "size_bytes": v.size_bytes, **v.info} for name, v in variants.items()}
    info = {"description": wl.shape_note, "variants": summary}
    return info, rows


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke test: small shapes, few runs (not representative)")
    p.add_argument("--models", default="cnn,bert", help="comma-separated subset of: cnn, bert (default: both)")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,32; --quick: 1,4)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per row (default 50 at batch 1, else 30)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up runs per row (default 5; --quick: 2)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="directory for ptq.json/.md")
    p.add_argument("-v", "--verbose", action="store_true", help="log tracebacks of failed variants")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - {"cnn", "bert"})
    if unknown or not models:
        raise ValueError(f"--models takes cnn and/or bert, got {args.models!r}")
    default_batches = "1,4" if args.quick else "1,32"
    batches = [int(b) for b in (args.batches or default_batches).split(",")]
    if any(b < 1 for b in batches):
        raise ValueError(f"batch sizes must be >= 1, got {batches}")
    runs = args.runs if args.runs is not None else (5 if args.quick else None)
    if runs is not None and runs < 1:
        raise ValueError("--runs must be >= 1")
    if runs is not None and runs < 30 and not args.quick:
        logging.getLogger("bench_ptq").warning("--runs %d is below the 30 the benchmark promises", runs)
    return Settings(quick=args.quick, models=models, batches=batches,
                    warmup=args.warmup if args.warmup is not None else (2 if args.quick else 5), runs=runs,
                    image=64 if args.quick else 224, seq_len=32 if args.quick else 128,
                    calib_batches=2 if args.quick else 8, calib_batch_size=4,
                    eval_samples=4 if args.quick else 16)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("mixq").setLevel(logging.WARNING)
    log = logging.getLogger("bench_ptq")
    try:
        s = settings_from(args)
    except ValueError as err:
        log.error("%s", err)
        return 2
    torch.set_num_threads(THREADS)
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    result: dict[str, Any] = {
        "machine": ptq_report.machine_info(REPO),
        "config": {"quick": s.quick, "threads": THREADS, "warmup": s.warmup, "batches": s.batches,
                   "block": BLOCK, "quiet_share": QUIET_SHARE, "quiet_wait_s": QUIET_WAIT_S,
                   "runs_note": str(s.runs) if s.runs is not None else "50 (batch 1) / 30 (larger batches)",
                   "image": s.image, "seq_len": s.seq_len, "calib_batches": s.calib_batches,
                   "calib_batch_size": s.calib_batch_size, "eval_samples": s.eval_samples,
                   "calibration_note": f"{s.calib_batches} batches x {s.calib_batch_size} random samples "
                                       "(BERT: random token ids, random padded lengths)"},
        "models": {}, "rows": [], "notes": [],
    }
    with tempfile.TemporaryDirectory(prefix="mixq_ptq_") as tmpdir:
        for name in s.models:
            wl = ptq_models.make_cnn(s.image) if name == "cnn" else ptq_models.make_bert(s.seq_len)
            log.info("== %s: %s", name, wl.shape_note)
            info, rows = bench_model(wl, s, Path(tmpdir), log)
            result["models"][name] = info
            result["rows"] += rows
            raw = info["variants"]["ort_fp32"].get("raw_export_ops")
            raw_mb = info["variants"]["ort_fp32"].get("raw_export_mb", 0.0)
            if raw:
                shown = ", ".join(f"{k} x{n}" for k, n in raw.items() if k not in ("Add", "Relu", "MaxPool"))
                result["notes"].append(
                    f"{name}: the fp32 file straight from `mixq.export_onnx` ({raw_mb:.2f} MB) still holds, after "
                    f"ORT's optimisation: {shown}; the benchmark constant-folds it with "
                    "onnxscript before using it as the ORT fp32 reference and quantizer input (see export_fp32)")
            for vname, v in info["variants"].items():
                if v.get("error"):
                    result["notes"].append(f"{name} / {ptq_report.LABELS[vname]} failed: {v['error']}")
                if v.get("direct_error"):
                    result["notes"].append(f"{name} / {ptq_report.LABELS[vname]} failed on the fp32 file as exported "
                                           f"({v['direct_error']}); ran after quant_pre_process")
    result["load_average_1m"] = {"start": load_start, "end": os.getloadavg()[0]}
    result["targets"] = ptq_report.check_targets(result["rows"])
    result["elapsed_s"] = round(time.perf_counter() - start, 1)
    markdown = ptq_report.render_markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ptq.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "ptq.md").write_text(markdown)
    print(markdown)
    log.info("wrote %s and %s in %.0f s", args.out / "ptq.json", args.out / "ptq.md", result["elapsed_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

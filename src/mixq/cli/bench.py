"""``mixq bench``: latency (median, p90) and file size of ONNX models on ONNX Runtime and ``.tflite`` files on
LiteRT (XNNPACK), side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mixq.cli.errors import CliError, existing_file, first_line, output_file
from mixq.cli.formatting import HelpFormatter
from mixq.cli.loading import parse_ints


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``bench`` and its options to the ``mixq`` subparsers."""
    p = sub.add_parser("bench", parents=parents, help="latency (median, p90) and size of ONNX models on ONNX Runtime",
                       description="Time each ONNX model on ONNX Runtime (CPU) at each batch size with random inputs "
                                   "(warm-up first), and show median and 90th-percentile latency next to file size. "
                                   "The first input dimension is the batch; other symbolic dimensions are set to 1.",
                       epilog="example:\n  mixq bench fp32.onnx int8.onnx --batch 1,32 --threads 4",
                       formatter_class=HelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL.onnx",
                   help="ONNX files (dynamic batch dimension) and/or .tflite files (run on LiteRT with XNNPACK)")
    p.add_argument("--batch", default="1,32", metavar="B1,B2", help="comma-separated batch sizes (default 1,32)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="ONNX Runtime intra-op threads (default: ONNX Runtime's choice)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per model and batch size (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.set_defaults(run=run)


def _session(path: Path, threads: int | None) -> Any:
    from mixq.report import ort_session

    if path.suffix == ".tflite":
        return _litert_session(path, threads)
    try:
        return ort_session(path, threads)
    except Exception as err:
        raise CliError(f"ONNX Runtime cannot load {path} ({first_line(err)})",
                       "pass an ONNX model file, e.g. one written by mixq quantize or mixq.export_onnx") from err


def _litert_session(path: Path, threads: int | None) -> Any:
    from mixq.export.tflite import INSTALL_HINT, LiteRTSession, litert_available

    if not litert_available():
        raise CliError(f"benchmarking {path.name} needs the LiteRT extra, which is not installed", INSTALL_HINT)
    try:
        return LiteRTSession(path, threads)
    except Exception as err:
        raise CliError(f"LiteRT cannot load {path} ({first_line(err)})",
                       "pass a .tflite file, e.g. one written by mixq quantize --format tflite") from err


def bench(paths: list[Path], batches: list[int], threads: int | None, runs: int, warmup: int,
          progress: bool = True) -> list[dict[str, Any]]:
    """One result dict per model: size and, per batch size, the latency or why it could not be measured."""
    from mixq.report import measure_latency, random_feeds

    sessions = [_session(path, threads) for path in paths]  # every file loads before any timing starts
    results = []
    with tqdm(total=len(paths) * len(batches), desc="benchmarking", leave=False, disable=not progress) as steps:
        for path, session in zip(paths, sessions, strict=True):
            entry: dict[str, Any] = {"model": str(path), "size_bytes": path.stat().st_size, "latency": {}}
            for batch in batches:
                try:
                    own = getattr(session, "random_feeds", None)  # LiteRT sessions make their own inputs
                    feeds = own(batch) if own is not None else random_feeds(session, batch)
                except ValueError as err:
                    entry["latency"][str(batch)] = {"error": str(err)}
                else:
                    entry["latency"][str(batch)] = measure_latency(session, feeds, runs, warmup).to_dict()
                steps.update()
            results.append(entry)
    return results


def table(results: list[dict[str, Any]], batches: list[int]) -> str:
    """Markdown table: model, size, and median / p90 latency per batch size."""
    headers = ["model", "size (KB)"] + [h for b in batches for h in (f"b{b} median (ms)", f"b{b} p90 (ms)")]
    lines = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
    for r in results:
        cells = [Path(r["model"]).name, f"{r['size_bytes'] / 1024:.1f}"]
        for b in batches:
            lat = r["latency"][str(b)]
            cells += ["n/a", "n/a"] if "error" in lat else [f"{lat['median_ms']:.3f}", f"{lat['p90_ms']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"note: {Path(r['model']).name} b{b}: {lat['error']}" for r in results
             for b, lat in ((int(k), v) for k, v in r["latency"].items()) if "error" in lat]
    return "\n".join(lines + notes)


def run(args: argparse.Namespace) -> int:
    """Run ``mixq bench``; bad input raises :class:`~mixq.cli.errors.CliError`. Returns the exit code."""
    from mixq.report import atomic_write_text

    paths = [existing_file(m, "model") for m in args.models]
    batches = parse_ints(args.batch, "--batch", "1,32")
    if args.runs < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        raise CliError("--runs and --threads must be >= 1 and --warmup >= 0", "pass e.g. --runs 50 --threads 2")
    out = output_file(args.json, "--json", ".json", paths) if args.json else None
    results = bench(paths, batches, args.threads, args.runs, args.warmup)
    print(table(results, batches))
    if out is not None:
        data = {"threads": args.threads, "runs": args.runs, "warmup": args.warmup, "batches": batches,
                "results": results}
        atomic_write_text(out, json.dumps(data, indent=2) + "\n")
        print(f"wrote {out}")
    return 0

"""``mixq bench``: ONNX Runtime latency (median, p90) and file size of one or more ONNX models, side by side."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mixq.cli.errors import CliError, existing_file, first_line, output_file
from mixq.cli.formatting import HelpFormatter
from mixq.cli.loading import parse_ints


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``bench`` and its options to the ``mixq`` subparsers."""
    p = sub.add_parser("bench", parents=parents, help="latency (median, p90) and size of ONNX models on ONNX Runtime",
                       description="Time each ONNX model on ONNX Runtime (CPU), every file fed the same inputs "
                                   "(warm-up first), and show median and 90th-percentile latency next to file size. "
                                   "Shapes: --shape / --inputs, else each --batch size with the files' fixed "
                                   "dimensions. Inputs: floats are random normal, masks ones, token ids random "
                                   "below the vocabulary size the graph indexes.",
                       epilog="examples:\n  mixq bench fp32.onnx int8.onnx --batch 1,32 --threads 4\n"
                              "  mixq bench bert_fp32.onnx bert_int8.onnx --shape input_ids=1x128 "
                              "--shape attention_mask=1x128\n"
                              "  mixq bench bert_fp32.onnx bert_int8.onnx --inputs tokens.npz",
                       formatter_class=HelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL.onnx",
                   help="ONNX files taking the same inputs, or .tflite files (LiteRT with XNNPACK; --batch only)")
    p.add_argument("--batch", default=None, metavar="B1,B2", help="comma-separated batch sizes (default 1,32)")
    shapes = p.add_mutually_exclusive_group()
    shapes.add_argument("--shape", action="append", default=None, metavar="NAME=1x128",
                        help="the shape of input NAME (repeatable); inputs sharing its symbolic axes follow it")
    shapes.add_argument("--inputs", metavar="FILE.npz", help="time on these arrays (one per input, by name)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="ONNX Runtime intra-op threads (default: ONNX Runtime's choice)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per model and shape (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.set_defaults(run=run)


@dataclass(frozen=True)
class Setting:
    """One column of the table: what to call it, the shapes every file gets, and given arrays (else synthesised)."""

    key: str
    header: str
    shapes: dict[str, tuple[int, ...]]
    arrays: dict[str, np.ndarray] | None = None


def _session(path: Path, threads: int | None) -> Any:
    from mixq.report import ort_session

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


def bench_litert(paths: list[Path], batches: list[int], threads: int | None, runs: int,
                 warmup: int) -> list[dict[str, Any]]:
    """LiteRT latency per batch size for ``.tflite`` files (each session makes inputs of its own signature)."""
    from mixq.report import measure_latency

    sessions = [_litert_session(path, threads) for path in paths]
    results = []
    for path, session in zip(paths, sessions, strict=True):
        entry: dict[str, Any] = {"model": str(path), "size_bytes": path.stat().st_size, "latency": {}}
        for batch in batches:
            try:
                entry["latency"][str(batch)] = measure_latency(session, session.random_feeds(batch), runs,
                                                               warmup).to_dict()
            except Exception as err:  # e.g. a file exported with a fixed batch
                entry["latency"][str(batch)] = {"error": f"LiteRT failed: {first_line(err)}"}
        results.append(entry)
    return results


def bench(paths: list[Path], settings: list[Setting], threads: int | None, runs: int, warmup: int,
          progress: bool = True, sessions: list[Any] | None = None) -> list[dict[str, Any]]:
    """One result dict per model: size and, per setting, the latency or why it could not be measured."""
    from mixq.report import measure_latency
    from mixq.report.feeds import cast_feeds, graph_inputs, index_limits, synthesize, unfit_shape

    sessions = sessions or [_session(path, threads) for path in paths]  # every file loads before any timing starts
    inputs = [graph_inputs(session) for session in sessions]
    limits: dict[str, int | None] = {}
    integer_names = [i.name for i in inputs[0] if np.issubdtype(i.dtype, np.integer)]
    for path in paths if integer_names else []:  # token ids stay below every file's smallest table
        for name, limit in index_limits(path, integer_names).items():
            limits[name] = limit if limits.get(name) is None else min(limits[name], limit or limits[name])
    results = [{"model": str(path), "size_bytes": path.stat().st_size, "latency": {}} for path in paths]
    with tqdm(total=len(paths) * len(settings), desc="benchmarking", leave=False, disable=not progress) as steps:
        for setting in settings:
            feeds = setting.arrays or synthesize(inputs[0], setting.shapes, limits)
            for entry, session, own in zip(results, sessions, inputs, strict=True):
                why = unfit_shape(own, setting.shapes)
                if why is not None:
                    entry["latency"][setting.key] = {"error": why}
                else:
                    try:
                        entry["latency"][setting.key] = measure_latency(session, cast_feeds(feeds, own), runs,
                                                                        warmup).to_dict()
                    except Exception as err:  # e.g. a shape the graph's ops cannot take
                        entry["latency"][setting.key] = {"error": f"ONNX Runtime failed: {first_line(err)}"}
                steps.update()
    return results


def table(results: list[dict[str, Any]], settings: list[Setting]) -> str:
    """Markdown table: model, size, and median / p90 latency per setting (batch size or shape)."""
    headers = ["model", "size (KB)"] + [h for st in settings for h in (f"{st.header} median (ms)",
                                                                        f"{st.header} p90 (ms)")]
    lines = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
    for r in results:
        cells = [Path(r["model"]).name, f"{r['size_bytes'] / 1024:.1f}"]
        for st in settings:
            lat = r["latency"][st.key]
            cells += ["n/a", "n/a"] if "error" in lat else [f"{lat['median_ms']:.3f}", f"{lat['p90_ms']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"note: {Path(r['model']).name} {st.header}: {r['latency'][st.key]['error']}" for r in results
             for st in settings if "error" in r["latency"][st.key]]
    shapes = "; ".join(f"{st.header}: " + ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in st.shapes.items())
                       for st in settings)
    return "\n".join(lines + notes + [f"inputs: {shapes}"])


def _parse_shapes(texts: list[str]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for text in texts:
        name, sep, dims = text.partition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) < 1:
            raise CliError(f"--shape {text!r} is not NAME=DIMS", "write it like --shape input_ids=1x128")
        if name in shapes:
            raise CliError(f"--shape gives {name!r} twice", "give each input one shape")
        shapes[name] = shape
    return shapes


def _load_inputs(path_text: str, inputs: list[Any]) -> dict[str, np.ndarray]:
    from mixq.cli.loading import load_arrays

    path = existing_file(path_text, "--inputs")
    arrays = load_arrays(path)
    if list(arrays) == [""]:  # one .npy array: the model's only input
        if len(inputs) != 1:
            raise CliError(f"--inputs {path_text} holds one unnamed array, but the models take {len(inputs)} "
                           "inputs", "save them by name: numpy.savez(FILE, input_ids=..., attention_mask=...)")
        arrays = {inputs[0].name: arrays[""]}
    names = sorted(i.name for i in inputs)
    if sorted(arrays) != names:
        raise CliError(f"--inputs {path_text} holds arrays {sorted(arrays)}, but the models take inputs {names}",
                       "save one array per input, named like the input (numpy.savez(FILE, NAME=array, ...))")
    for i in inputs:
        if np.issubdtype(i.dtype, np.integer) and not np.issubdtype(arrays[i.name].dtype, np.integer):
            raise CliError(f"--inputs {path_text}: {i.name!r} holds {arrays[i.name].dtype} values, but the models "
                           f"take {np.dtype(i.dtype).name}", "save integer arrays for integer inputs (token ids)")
    return arrays


def _settings(args: argparse.Namespace, paths: list[Path], sessions: list[Any]) -> list[Setting]:
    from mixq.report.feeds import graph_inputs, plan_shapes

    if args.batch is not None and (args.shape or args.inputs):
        raise CliError("--batch cannot be combined with --shape or --inputs, which set the batch size themselves",
                       "drop --batch")
    try:
        files = {path.name: graph_inputs(session) for path, session in zip(paths, sessions, strict=True)}
    except ValueError as err:
        raise CliError(str(err), "mixq bench feeds float, int32/int64 and bool inputs") from err
    first = next(iter(files.values()))
    try:
        if args.inputs:
            arrays = _load_inputs(args.inputs, first)
            shapes = plan_shapes(files, {k: a.shape for k, a in arrays.items()})
            return [Setting(_label(shapes), _label(shapes), shapes, arrays)]
        if args.shape:
            shapes = plan_shapes(files, _parse_shapes(args.shape))
            return [Setting(_label(shapes), _label(shapes), shapes)]
        batches = parse_ints(args.batch or "1,32", "--batch", "1,32")
        return [Setting(str(b), f"b{b}", plan_shapes(files, batch=b)) for b in batches]
    except ValueError as err:
        raise CliError(str(err).partition("; ")[0], str(err).partition("; ")[2] or "see mixq bench --help") from err


def _label(shapes: dict[str, tuple[int, ...]]) -> str:
    first = next(iter(shapes.values()), ())
    return "x".join(map(str, first)) or "scalar"


def run(args: argparse.Namespace) -> int:
    """Run ``mixq bench``; bad input raises :class:`~mixq.cli.errors.CliError`. Returns the exit code."""
    from mixq.report import atomic_write_text

    paths = [existing_file(m, "model") for m in args.models]
    if args.runs < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        raise CliError("--runs and --threads must be >= 1 and --warmup >= 0", "pass e.g. --runs 50 --threads 2")
    out = output_file(args.json, "--json", ".json", paths) if args.json else None
    tflite = [p.suffix == ".tflite" for p in paths]
    if any(tflite):
        if not all(tflite) or args.shape or args.inputs:
            raise CliError("bench .tflite files on their own, with --batch only (their inputs follow each file's "
                           "signature)", "run mixq bench once for the .onnx files and once for the .tflite files")
        batches = parse_ints(args.batch or "1,32", "--batch", "1,32")
        settings = [Setting(str(b), f"batch {b}", {}) for b in batches]
        results = bench_litert(paths, batches, args.threads, args.runs, args.warmup)
        print(table(results, settings))
        if out is not None:
            atomic_write_text(out, json.dumps({"threads": args.threads, "runs": args.runs, "warmup": args.warmup,
                                               "batches": batches, "results": results}, indent=2) + "\n")
            print(f"wrote {out}")
        return 0
    if args.batch is not None:
        parse_ints(args.batch, "--batch", "1,32")
    sessions = [_session(path, args.threads) for path in paths]
    settings = _settings(args, paths, sessions)
    results = bench(paths, settings, args.threads, args.runs, args.warmup, sessions=sessions)
    print(table(results, settings))
    if out is not None:
        data = {"threads": args.threads, "runs": args.runs, "warmup": args.warmup,
                "batches": [int(st.key) for st in settings] if not (args.shape or args.inputs) else None,
                "shapes": {st.key: {k: list(v) for k, v in st.shapes.items()} for st in settings},
                "inputs": args.inputs, "results": results}
        atomic_write_text(out, json.dumps(data, indent=2) + "\n")
        print(f"wrote {out}")
    return 0

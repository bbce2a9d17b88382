"""``mixq bench``: latency (median, p90) and file size of ONNX models (ONNX Runtime, or OpenVINO with ``--runtime``)
and LiteRT files (XNNPACK), side by side in one table, every file timed in interleaved rounds; ``--runtime all``
times each file on every installed runtime of its format and says which was fastest."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mixq.cli.bench_checks import check_bench_values
from mixq.cli.bench_table import table
from mixq.cli.errors import CliError, existing_file, first_line, output_file
from mixq.cli.formatting import HelpFormatter
from mixq.cli.limits import check_bench_inputs
from mixq.cli.loading import parse_ints
from mixq.export.backend import Runtime, get_format, runtime_for, runtimes, runtimes_for

ROUNDS = 5  # timing rounds; each runs every file in turn
WARMUP = 5  # untimed calls per file and column before the timed ones (with --budget: at most)
BUDGET_S = 60.0  # default seconds for the whole command, loading the files included
BUDGET_AIM = 0.95  # share of the budget the plan fills, for the jitter of the calls it did not time yet
WARMUP_SHARE = 0.1  # with --budget, warm-up takes at most about this share of it (at least one call each)
RUNS_FLOOR = 3  # the fewest timed runs a budget picks: medians and 90th percentiles of fewer mean little
RUNS_CAP = 50  # the most: fast files are not timed for the whole budget


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``bench`` and its options to the ``mixq`` subparsers."""
    p = sub.add_parser("bench", parents=parents, help="latency (median, p90) and size of ONNX and LiteRT files",
                       description="Time ONNX models on ONNX Runtime (CPU; or OpenVINO with --runtime) and .tflite "
                                   "files on LiteRT (XNNPACK), "
                                   "warm-up first, then interleaved rounds that run every file in turn, and show "
                                   "median and 90th-percentile latency next to file size. Shapes: --shape / "
                                   "--inputs, else each --batch size with the files' fixed dimensions; ONNX files "
                                   "get the same inputs; with --batch a .tflite file gets inputs of its own "
                                   "signature (e.g. NHWC), with --shape / --inputs the ONNX files' arrays (by name, "
                                   "else by position). Inputs: floats are random normal, masks ones, token ids "
                                   "random below the vocabulary size the graph indexes. Run counts: unless --runs "
                                   "sets them, one probe call per file and column, then per column the warm-up and "
                                   "as many timed runs per file as fit --budget (3 to 50, planned after the "
                                   "warm-up from its last calls; 3 even past the budget, with a note).",
                       epilog="examples:\n  mixq bench fp32.onnx int8.onnx --batch 1,32 --threads 4\n"
                              "  mixq bench model.onnx model_int8.onnx model_int8.tflite --batch 1 --threads 2\n"
                              "  mixq bench fp32.onnx int8.onnx --runtime all --batch 1,32 --threads 2\n"
                              "  mixq bench bert_fp32.onnx bert_int8.onnx --shape input_ids=1x128 "
                              "--shape attention_mask=1x128\n"
                              "  mixq bench bert_fp32.onnx bert_int8.onnx --inputs tokens.npz",
                       formatter_class=HelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help=".onnx files taking the same inputs, and/or .tflite files (LiteRT with XNNPACK)")
    p.add_argument("--batch", default=None, metavar="B1,B2", help="comma-separated batch sizes (default 1,32)")
    shapes = p.add_mutually_exclusive_group()
    shapes.add_argument("--shape", action="append", default=None, metavar="NAME=1x128",
                        help="the shape of ONNX input NAME (repeatable); inputs sharing its symbolic axes follow it")
    shapes.add_argument("--inputs", metavar="FILE.npz", help="time on these arrays (one per ONNX input, by name)")
    p.add_argument("--runtime", default=None, metavar="NAME",
                   help="run the files on this runtime: " + ", ".join(r.name for r in runtimes()) + " (options "
                        "after a colon: openvino:f32, openvino:bf16), or all: every installed runtime of each file's "
                        "format, OpenVINO at f32 and at its default precision, side by side (default: the format's "
                        "own runtime, ort for .onnx, litert for .tflite)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="intra-op threads (default: ONNX Runtime's choice; LiteRT 2)")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help=f"seconds the command may take, loading the files included: as many timed runs per file "
                        f"as fit, {RUNS_FLOOR} to {RUNS_CAP} (default {BUDGET_S:.0f})")
    p.add_argument("--runs", type=int, default=None,
                   help="exactly this many timed runs per model and column, however long (instead of --budget)")
    p.add_argument("--warmup", type=int, default=None,
                   help=f"untimed runs first (default {WARMUP}; with the budget, fewer for slow files: at most about "
                        f"{WARMUP_SHARE * 100:.0f}%% of it)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar (hidden anyway when stderr is "
                                                              "not a terminal)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.set_defaults(run=run)


@dataclass(frozen=True)
class Setting:
    """One column of the table: what to call it, the shapes the ONNX files get, given arrays (else synthesised),
    and the batch size (a --batch column: a .tflite file then builds inputs of its own signature)."""

    key: str
    header: str
    shapes: dict[str, tuple[int, ...]]
    arrays: dict[str, np.ndarray] | None = None
    batch: int | None = None


def plan_runtimes(paths: list[Path], name: str | None) -> list[tuple[Path, Runtime]]:
    """The table's rows: each file with ``--runtime`` (None: its format's default; ``all``: every installed one), a
    runtime that cannot run a file's format refused in one line."""
    if name == "all":
        return [(path, rt) for path in paths for rt in runtimes_for(path) or [runtime_for(path)]]
    try:
        return [(path, runtime_for(path, runtime=name)) for path in paths]
    except ValueError as err:
        raise CliError(f"--runtime {name}: {err}", "pick a runtime for these files, or --runtime all") from err


def _distinct(rows: list[tuple[Path, Runtime]], sessions: list[Any]) -> tuple[list[tuple[Path, Runtime]], list[Any]]:
    """Drop a row that runs the same file on the same runtime at a precision an earlier row already runs (OpenVINO's
    default is f32 on CPUs without bf16)."""
    seen, kept = set(), []
    for (path, rt), session in zip(rows, sessions, strict=True):
        key = (path, rt.name, rt.precision(session) or rt.label)
        if key not in seen:
            seen.add(key)
            kept.append(((path, rt), session))
    return [row for row, _ in kept], [session for _, session in kept]


def load_session(path: Path, threads: int | None, runtime: Runtime | None = None) -> Any:
    """A session of ``path`` on ``runtime`` (default ``mixq.export.backend.runtime_for``: ONNX Runtime, LiteRT for
    .tflite)."""
    runtime = runtime or runtime_for(path)
    if not runtime.available():
        raise CliError(f"benchmarking {path.name} needs the {runtime.title} extra, which is not installed",
                       runtime.install_hint or "")
    try:
        return runtime.session(path, threads)
    except Exception as err:
        raise CliError(f"{runtime.title} cannot load {path} ({first_line(err)})",
                       get_format(runtime.format).file_hint) from err


def _own_feeds(runtime: Any, session: Any, setting: Setting, shared: dict[str, np.ndarray] | None) -> Any:
    """Inputs of a file with its own signature (a .tflite file): at a --batch size, else the named-input files'
    arrays matched to its inputs by name, or by position when the names differ."""
    if setting.batch is not None:
        return runtime.batch_feeds(session, setting.batch)
    assert shared is not None  # --shape / --inputs columns come from named-input files (_settings refuses them without)
    return runtime.feeds(session, shared)


def _feeds(runtime: Runtime, session: Any, own: Any, setting: Setting, shared: dict[str, np.ndarray] | None) -> Any:
    """The inputs one file is timed on for ``setting``, or the reason it cannot take them (a string)."""
    from mixq.report.feeds import cast_feeds, unfit_shape

    if not runtime.named_inputs:
        try:
            return _own_feeds(runtime, session, setting, shared)
        except ValueError as err:  # a shape the signature does not take
            return first_line(err)
        except Exception as err:  # e.g. a graph LiteRT cannot resize
            return f"{runtime.title} failed: {first_line(err)}"
    why = unfit_shape(own, setting.shapes)
    return why if why is not None else cast_feeds(shared or {}, own)


@dataclass(frozen=True)
class Timing:
    """The timed runs per file of each setting (by key), the warm-up calls before them, and whether the fewest runs
    a budget allows (``RUNS_FLOOR``) did not fit it."""

    runs: dict[str, int]
    warmup: int
    over_budget: bool = False


def bench(paths: list[Path], settings: list[Setting], threads: int | None, runs: int | None, warmup: int | None,
          progress: bool = True, sessions: list[Any] | None = None, budget: float | None = None,
          started: float | None = None, rts: list[Runtime] | None = None) -> tuple[list[dict[str, Any]], Timing]:
    """One result dict per model: size and, per setting, the latency or why it could not be measured; and the runs.
    Per setting, every file is warmed up (``warmup`` calls, None: ``WARMUP``), then all are timed in ``ROUNDS``
    interleaved rounds of ``runs`` calls in all, or (``runs`` None) as many as fit ``budget`` seconds from
    ``started`` (a ``time.perf_counter()``, default now): one probe call of each file per setting sizes the warm-up
    (None: at most ``WARMUP_SHARE`` of the budget) and, with each setting's last warm-up calls, its timed runs.
    ``rts``: the runtime of each file (a file may be listed once per runtime; default: its format's own)."""
    from mixq.report.feeds import graph_inputs, index_limits, synthesize
    from mixq.report.latency import measure_interleaved, probe, runs_within

    started = time.perf_counter() if started is None else started
    rts = rts or [runtime_for(path) for path in paths]
    sessions = sessions or [load_session(p, threads, rt) for p, rt in zip(paths, rts, strict=True)]  # before timing
    inputs = {k: graph_inputs(s) for k, (rt, s) in enumerate(zip(rts, sessions, strict=True)) if rt.named_inputs}
    reference = next(iter(inputs.values()), [])
    limits: dict[str, int | None] = {}
    integer_names = [i.name for i in reference if np.issubdtype(i.dtype, np.integer)]
    for k in inputs if integer_names else []:  # token ids stay below every file's smallest table
        for name, limit in index_limits(paths[k], integer_names).items():
            limits[name] = limit if limits.get(name) is None else min(limits[name], limit or limits[name])
    results = [{"model": str(path), "runtime": rt.label, "precision": rt.precision(session),
                "size_bytes": path.stat().st_size, "latency": {}, "inputs": {}}
               for path, rt, session in zip(paths, rts, sessions, strict=True)]
    shared: dict[str, dict[str, np.ndarray] | None] = {}
    for setting in settings:  # in the named-input files' order (a .tflite file may take them by position)
        given = setting.arrays or synthesize(reference, setting.shapes, limits) if inputs else None
        shared[setting.key] = {i.name: given[i.name] for i in reference} if given is not None else None

    def failed(k: int, key: str, err: Exception) -> None:  # e.g. a shape the graph's ops cannot take
        results[k]["latency"][key] = {"error": f"{rts[k].title} failed: {first_line(err)}"}

    def jobs_of(setting: Setting, files: range | list[int]) -> dict[int, tuple[Any, Any]]:
        """``files``' sessions and inputs for ``setting``; a .tflite file is resized here, so right before timing."""
        jobs = {}
        for k in files:
            runtime, session, entry = rts[k], sessions[k], results[k]
            feeds = _feeds(runtime, session, inputs.get(k), setting, shared[setting.key])
            if isinstance(feeds, str):
                entry["latency"][setting.key] = {"error": feeds}
                continue
            jobs[k] = (session, feeds)
            entry["inputs"][setting.key] = ({n: tuple(a.shape) for n, a in feeds.items()}
                                            if runtime.named_inputs else dict(session.input_shapes))
        return jobs

    every = range(len(paths))
    live = {st.key: list(every) for st in settings}  # the files each setting times
    cost = dict.fromkeys(live, 0.0)  # seconds one call of every file takes, per setting (a first call each)
    chosen: dict[str, int] = {}
    noted = False
    planned = WARMUP if warmup is None else warmup
    bar = tqdm(total=len(paths) * len(settings) * (planned + (runs or RUNS_CAP) + (runs is None)), unit="call",
               desc="benchmarking", leave=False, disable=not progress or not sys.stderr.isatty())

    def left() -> float:
        assert budget is not None
        return BUDGET_AIM * budget - (time.perf_counter() - started)

    def plan(i: int, warm: dict[int, float]) -> int:
        """Timed runs for ``settings[i]`` after its warm-up (``warm``: each file's last call, in seconds): the
        same for every later setting, all within the budget, judged by the probe calls scaled to ``warm``."""
        nonlocal noted
        key, seconds = settings[i].key, left()
        steady = sum(warm.values()) if warm else cost[key]
        scale = steady / cost[key] if warm and cost[key] > 0 else 1.0
        later = scale * sum(cost[st.key] for st in settings[i + 1:])  # their warm-up and timed runs still to come
        n = runs_within(seconds - later * planned, steady + later, RUNS_FLOOR, RUNS_CAP)
        need = (steady + later) * n + later * planned
        if need > seconds and not noted:  # the floor does not fit: said once
            noted = True
            tqdm.write(f"mixq: note: the fewest timed runs ({n} per file and column) take about {need:.1f} s more, "
                       f"past --budget {budget:g} s; timing them anyway", file=sys.stderr)
        bar.total = bar.n + len(live[key]) * n + sum(len(live[st.key]) for st in settings[i + 1:]) * (planned + n)
        bar.refresh()
        chosen[key] = n
        return n

    with bar:
        for setting in settings if runs is None else ():
            for k, seconds in probe(jobs_of(setting, every), tick=bar.update).items():
                if isinstance(seconds, Exception):
                    failed(k, setting.key, seconds)
                else:
                    cost[setting.key] += seconds
            live[setting.key] = [k for k in every if "error" not in results[k]["latency"].get(setting.key, {})]
        if runs is None and warmup is None:  # slow files: fewer warm-up calls, so that more are timed
            total = sum(cost.values())
            share = WARMUP_SHARE * (budget or BUDGET_S)
            planned = max(1, min(WARMUP, int(share // total))) if total > 0 else WARMUP
        for i, setting in enumerate(settings):
            jobs = jobs_of(setting, live[setting.key])
            n: Any = runs if runs is not None else (lambda warm, i=i: plan(i, warm))
            if runs is not None:
                chosen[setting.key] = runs
            for k, measured in measure_interleaved(jobs, n, planned, ROUNDS, tick=bar.update).items():
                if isinstance(measured, Exception):
                    failed(k, setting.key, measured)
                else:
                    results[k]["latency"][setting.key] = measured.to_dict()
    for entry in results:
        entry["inputs"] = {key: {n: list(v) for n, v in shapes.items()} for key, shapes in entry["inputs"].items()}
    return results, Timing(chosen, planned, noted)


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
    """The table's columns: shapes planned across the ONNX files (a .tflite file adapts to each column)."""
    from mixq.report.feeds import graph_inputs, plan_shapes

    if args.batch is not None and (args.shape or args.inputs):
        raise CliError("--batch cannot be combined with --shape or --inputs, which set the batch size themselves",
                       "drop --batch")
    onnx = [(path, session) for path, session in zip(paths, sessions, strict=True) if runtime_for(path).named_inputs]
    if not onnx:
        if args.shape or args.inputs:
            raise CliError("--shape and --inputs set ONNX inputs by name, and these are all .tflite files (fixed "
                           "shapes, at most a resizable batch)", "time them with --batch, or list the model's .onnx "
                           "export too (each .tflite file then takes its arrays)")
        return [Setting(str(b), f"b{b}", {}, batch=b) for b in parse_ints(args.batch or "1,32", "--batch", "1,32")]
    try:
        files = {path.name: graph_inputs(session) for path, session in onnx}
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
        return [Setting(str(b), f"b{b}", plan_shapes(files, batch=b), batch=b) for b in batches]
    except ValueError as err:
        raise CliError(str(err).partition("; ")[0], str(err).partition("; ")[2] or "see mixq bench --help") from err


def _label(shapes: dict[str, tuple[int, ...]]) -> str:
    first = next(iter(shapes.values()), ())
    return "x".join(map(str, first)) or "scalar"


def run(args: argparse.Namespace) -> int:
    """Run ``mixq bench``; bad input raises :class:`~mixq.cli.errors.CliError`. Returns the exit code."""
    from mixq.report import atomic_write_text

    paths = [existing_file(m, "model") for m in args.models]
    started = time.perf_counter()
    if (args.runs is not None and args.runs < 1) or (args.warmup is not None and args.warmup < 0) or (
            args.threads is not None and args.threads < 1):
        raise CliError("--runs and --threads must be >= 1 and --warmup >= 0", "pass e.g. --runs 50 --threads 2")
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget > 0):
        raise CliError(f"--budget must be a positive number of seconds, not {args.budget:g}", "pass e.g. --budget 60")
    if args.budget is not None and args.runs is not None:
        raise CliError("--runs sets the timed runs and --budget picks them to fit a time; give one of them",
                       "drop --runs to fit the budget, or --budget to time exactly --runs runs")
    budget = (args.budget or BUDGET_S) if args.runs is None else None
    out = output_file(args.json, "--json", ".json", paths) if args.json else None
    if args.batch is not None:
        parse_ints(args.batch, "--batch", "1,32")
    rows = plan_runtimes(paths, args.runtime)
    sessions = [load_session(path, args.threads, rt) for path, rt in rows]
    rows, sessions = _distinct(rows, sessions)
    paths, rts = [p for p, _ in rows], [rt for _, rt in rows]
    settings = _settings(args, paths, sessions)
    check_bench_inputs(settings, [s.input_shapes for rt, s in zip(rts, sessions, strict=True) if not rt.named_inputs])
    check_bench_values(settings, paths, sessions, "--inputs" if args.inputs else "--shape" if args.shape else None)
    results, timing = bench(paths, settings, args.threads, args.runs, args.warmup, progress=not args.no_progress,
                            sessions=sessions, budget=budget, started=started, rts=rts)
    took = time.perf_counter() - started
    print(table(results, settings, [rt.named_inputs for rt in rts], show_runtime=args.runtime is not None))
    fitted = ("" if budget is None else f" (the fewest; they did not fit --budget {budget:g} s)"
              if timing.over_budget else f" (as many as fit --budget {budget:g} s)")
    print("timed runs per file: " + ", ".join(f"{st.header} {timing.runs[st.key]}" for st in settings)
          + f"{fitted}, after {timing.warmup} warm-up; took {took:.1f} s")
    if out is not None:
        data = {"threads": args.threads, "budget_s": budget, "over_budget": timing.over_budget, "runs": timing.runs,
                "warmup": timing.warmup, "rounds": ROUNDS, "seconds": round(took, 3),
                "batches": [st.batch for st in settings] if not (args.shape or args.inputs) else None,
                "shapes": {st.key: {k: list(v) for k, v in st.shapes.items()} for st in settings},
                "inputs": args.inputs, "results": results}
        atomic_write_text(out, json.dumps(data, indent=2) + "\n")
        print(f"wrote {out}")
    return 0

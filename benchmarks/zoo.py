"""The conformance zoo (tests/zoo) in full: every architecture in every mode, as a table.

For each architecture and mode: quantize, export, run in ONNX Runtime at two shapes, compare simulation with the
runtime and the quantized model with fp32 (``tests/zoo/conformance.py`` says the thresholds). Then the int8 file's
speed vs the fp32 file in ONNX Runtime per architecture (static int8, else dynamic), timed interleaved.

    PYTHONPATH=src .venv/bin/python benchmarks/zoo.py [--cases bert,resnet] [--families block,vision]
        [--modes static,dynamic] [--threads 2] [--out benchmarks/results/zoo]
    PYTHONPATH=src .venv/bin/python benchmarks/zoo.py --render part1.json part2.json   # one table from parts

Writes ``<out>.json`` (row by row, as cases finish) and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from ptq_report import machine_info  # noqa: E402

from tests.zoo.cases import CASES  # noqa: E402
from tests.zoo.conformance import MODES, Outcome, feeds, ort_session, run_case  # noqa: E402

MARK = {"ok": "✓", "refused": "refused", "fail": "✗"}
LEGEND = ("✓ q/n path: q of n layers quantized (the rest left float with a reason) by graph mode through torch.export "
          "or torch.fx, or layer by layer (path), exported, ONNX Runtime runs it at two "
          "shapes, simulation == runtime (cos >= 0.999, argmax >= 99%), error vs fp32 within int8 noise; ✓* "
          "simulation == runtime node by node (every quantize node, fed the runtime's own input, gives mixq's codes) "
          "where end to end the model amplifies float ops' last bits (its simulation moves as far under a one-ulp "
          "nudge of its input; the cell's note has the numbers). refused: "
          "quantize refused in one line, or left every layer float (the summary's reason). ✗: anything else. "
          "Time: the int8 file (static, else dynamic) vs the fp32 file in ORT at batch 2, interleaved, lower is "
          "faster.")


def speed(case, outcome: Outcome, directory: Path, threads: int) -> float | None:
    """fp32 file time / int8 file time at the first shape, timed interleaved (> 1: int8 is faster)."""
    import mixq
    from mixq.report.latency import measure_interleaved

    model, batch = case.build(), case.inputs(0, 0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fp32 = mixq.export_onnx(model, batch, directory / f"{case.name}-fp32.onnx")
    except Exception as err:  # noqa: BLE001  (the float model does not export: no baseline to time against)
        print(f"{case.name}: the fp32 model does not export ({type(err).__name__}); not timed", flush=True)
        return None
    jobs = {}
    for key, path in (("fp32", fp32), ("int8", outcome.path)):
        session = ort_session(path)
        if threads:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.log_severity_level = 3
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        jobs[key] = (session, feeds(session, batch))
    times = measure_interleaved(jobs, runs=40, warmup=5, rounds=4)
    if any(isinstance(t, Exception) for t in times.values()):
        return None
    return times["fp32"].median_ms / times["int8"].median_ms


def path(notes: list[str]) -> str:
    """Which path quantized the model, from its summary notes: graph mode through torch.export or torch.fx, else
    layer by layer."""
    if any(n.startswith("graph mode (torch.export)") for n in notes):
        return "export"
    return "fx" if any(n.startswith("graph mode (torch.fx)") for n in notes) else "layers"


def _cell(o: Outcome) -> str:
    if o.status == "ok":  # how many layers were quantized, of how many seen, and by which path
        star = "*" if any(n.startswith("simulation != runtime") for n in o.notes) else ""
        return f"✓{star} {o.quantized}/{o.quantized + o.left_float} {path(o.notes)}"
    return f"{MARK[o.status]} ({o.reason.replace('|', '/')[:110]})"


def _with_path(cell: str, metrics: dict[str, Any] | None) -> str:
    """A ✓ cell of an older run gets its path from the notes it recorded."""
    if not cell.startswith("✓") or cell.split()[-1] in ("export", "fx", "layers") or not metrics:
        return cell
    return f"{cell} {path(metrics.get('notes', []))}"


def table(rows: list[dict[str, Any]], modes: list[str]) -> list[str]:
    lines = ["| architecture | family | " + " | ".join(modes) + " | int8 vs fp32 time |",
             "|---|---|" + "---|" * len(modes) + "---:|"]
    for row in rows:
        ratio = row["int8_time_vs_fp32"]
        shown = f"{1 / ratio:.2f}x" if ratio else "–"
        cells = [_with_path(row["cells"].get(m, "–"), row["metrics"].get(m)) for m in modes]
        lines.append(f"| {row['case']} | {row['family']} | " + " | ".join(cells) + f" | {shown} |")
    return lines


def totals(rows: list[dict[str, Any]], modes: list[str]) -> list[str]:
    lines = ["| mode | ✓ | refused | ✗ | not run | ✓ share of those run | ✓ through torch.export / torch.fx / layer "
             "by layer |", "|---|---:|---:|---:|---:|---:|---:|"]
    for m in modes:
        counts = {s: sum(r["status"].get(m) == s for r in rows) for s in MARK}
        ran = sum(counts.values())
        paths = [path((r["metrics"].get(m) or {}).get("notes", [])) for r in rows if r["status"].get(m) == "ok"]
        lines.append(f"| {m} | {counts['ok']} | {counts['refused']} | {counts['fail']} | {len(rows) - ran} | "
                     f"{counts['ok'] / max(ran, 1):.0%} | {paths.count('export')} / {paths.count('fx')} / "
                     f"{paths.count('layers')} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--families", default="", help="comma-separated families (encoder, decoder, vision, ...)")
    parser.add_argument("--skip", default="", help="comma-separated case names to leave out")
    parser.add_argument("--timing", action=argparse.BooleanOptionalAction, default=True,
                        help="time the int8 file against fp32 (--no-timing: conformance only)")
    parser.add_argument("--render", nargs="+", type=Path, help="write the table from these JSON files only")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "zoo")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    if args.render:
        parts = [json.loads(p.read_text()) for p in args.render]
        rows = merge([r for p in parts for r in p["rows"]])
        write(args.out, parts[-1]["machine"], rows, modes)
        args.out.with_suffix(".json").write_text(json.dumps({"machine": parts[-1]["machine"], "rows": rows},
                                                            indent=1))
        return 0
    wanted = set(filter(None, args.cases.split(",")))
    families = set(filter(None, args.families.split(",")))
    skip = set(filter(None, args.skip.split(",")))
    cases = [c for c in CASES if (not wanted or c.name in wanted) and (not families or c.family in families)
             and c.name not in skip]
    info = machine_info(HERE.parent) | {"threads": args.threads}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            outcomes = {m: run_case(case, m, Path(tmp)) for m in modes}
            for o in outcomes.values():
                print(f"{case.name:18s} {o.mode:12s} {o.status:8s} {o.seconds:5.1f}s sim cos {o.sim_cos:.5f} "
                      f"argmax {o.sim_argmax:.3f} fp32 rel {o.fp32_rel:.4f} {o.reason}", flush=True)
            timed = next((outcomes[m] for m in ("static", "dynamic") if m in outcomes and outcomes[m].path
                          and outcomes[m].status == "ok"), None)
            ratio = speed(case, timed, Path(tmp), args.threads) if timed and args.timing else None
            rows.append({"case": case.name, "family": case.family, "int8_time_vs_fp32": ratio,
                         "timed_mode": timed.mode if timed else None,
                         "status": {m: o.status for m, o in outcomes.items()},
                         "cells": {m: _cell(o) for m, o in outcomes.items()},
                         "metrics": {m: {"reason": o.reason, "quantized": o.quantized, "left_float": o.left_float,
                                         "sim_cos": o.sim_cos, "sim_argmax": o.sim_argmax, "fp32_rel": o.fp32_rel,
                                         "notes": o.notes} for m, o in outcomes.items()}})
            info["load_average"] = os.getloadavg()
            args.out.with_suffix(".json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    write(args.out, info, rows, modes)
    return 0


def merge(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per architecture (in the zoo's order) from rows of runs over different modes."""
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:
        into = merged.setdefault(row["case"], {**row, "status": {}, "cells": {}, "metrics": {}})
        for key in ("status", "cells", "metrics"):
            into[key].update(row[key])
        if into["int8_time_vs_fp32"] is None:
            into["int8_time_vs_fp32"], into["timed_mode"] = row["int8_time_vs_fp32"], row["timed_mode"]
    for case in CASES:  # architectures no part ran: a row of "–"
        merged.setdefault(case.name, {"case": case.name, "family": case.family, "int8_time_vs_fp32": None,
                                      "timed_mode": None, "status": {}, "cells": {}, "metrics": {}})
    order = [c.name for c in CASES]
    return sorted(merged.values(), key=lambda r: order.index(r["case"]))


def write(out: Path, info: dict[str, Any], rows: list[dict[str, Any]], modes: list[str]) -> None:
    """The Markdown table ``<out>.md`` (totals, then one row per architecture)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    md = ["# Conformance zoo", "", f"`benchmarks/zoo.py` on {info['cpu']} ({info['logical_cpus']} logical CPUs, "
          f"load average {', '.join(f'{x:.1f}' for x in info['load_average'])} at the end; shared machine, so the "
          f"speed column is noisy), ORT {info['onnxruntime']}, torch {info['torch']}, transformers "
          f"{info['transformers']}, commit {info['git_commit']}. Thresholds: tests/zoo/conformance.py.", "",
          LEGEND, "", *totals(rows, modes), "", *table(rows, modes)]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(totals(rows, modes)))


if __name__ == "__main__":
    raise SystemExit(main())

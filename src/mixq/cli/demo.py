"""``mixq demo``: the end-to-end demo on the built-in digits CNN (see :mod:`mixq.demo`)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from mixq.cli.errors import CliError, require_writable
from mixq.cli.formatting import HelpFormatter
from mixq.report.files import StagedOutputs


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``demo`` and its options to the ``mixq`` subparsers."""
    p = sub.add_parser("demo", parents=parents, help="train, quantize, export and measure a CNN on bundled data",
                       description="Train a small residual CNN on scikit-learn's bundled digits in fp32 and with "
                                   "mixed precision, quantize it (static, dynamic, weight-only int8, fp16), export "
                                   "each variant to ONNX, run it in ONNX Runtime and write a report (Markdown, HTML, "
                                   "JSON, PNG plots). No network needed; under a minute on 2 CPU cores.",
                       epilog="examples:\n  mixq demo\n  mixq demo --quick --out /tmp/report --mixed-precision fp16",
                       formatter_class=HelpFormatter)
    p.add_argument("--out", default="mixq-report", metavar="DIR", help="report directory (default: mixq-report)")
    p.add_argument("--quick", action="store_true", help="a narrower model, fewer epochs and timing runs (a smoke test)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="runtime threads for the latency measurements (default 1)")
    p.add_argument("--runtime", default="ort", metavar="NAME",
                   help="where the .onnx files run and are timed: ort (default), openvino, openvino:f32, "
                        "openvino:bf16")
    p.add_argument("--mixed-precision", choices=("auto", "bf16", "fp16"), default="auto",
                   help="precision of the mixed-precision run: auto = fp16 with loss scaling on CUDA, else bf16")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=run)


def _check_runtime(name: str) -> None:
    """``--runtime`` must run .onnx files and be installed."""
    from mixq.export.backend import runtime_for

    try:
        runtime = runtime_for("model.onnx", runtime=name)
    except ValueError as err:
        raise CliError(f"--runtime {name}: {err}", "the demo writes .onnx files; pick a runtime for them") from err
    if not runtime.available():
        raise CliError(f"--runtime {name} needs {runtime.title}, which is not installed", runtime.install_hint or "")


def run(args: argparse.Namespace) -> int:
    """Run ``mixq demo``; bad input raises :class:`~mixq.cli.errors.CliError`. Returns the exit code."""
    from mixq.demo import run_demo

    out = Path(args.out)
    if not out.parent.exists():
        raise CliError(f"the parent directory of --out {str(out)!r} does not exist",
                       f"create it first (mkdir -p {out.parent}) or choose another --out")
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {str(out)!r} is a file", "pass a directory for the report")
    if args.threads < 1:
        raise CliError(f"--threads must be >= 1, got {args.threads}", "pass e.g. --threads 2")
    _check_runtime(args.runtime)
    require_writable(out if out.is_dir() else out.parent, "--out")
    created = not out.exists()
    out.mkdir(exist_ok=True)
    try:
        with StagedOutputs(out) as stage:  # the report, its plots and ONNX files: all of them, or none
            outcome = run_demo(stage.path(""), quick=args.quick, seed=args.seed, threads=args.threads,
                               mixed_precision=args.mixed_precision, progress=not args.no_progress,
                               runtime=args.runtime)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    print(outcome.terminal)
    print(f"\nreport: {out / outcome.report.name}")
    return 0

"""``mixq inspect``: which nodes of an ONNX model are quantized, which integer kernels ONNX Runtime runs after its
own optimisation, and the model's size by data type; for a ``.tflite`` file, its LiteRT operators with their types
and which of them XNNPACK runs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from mixq.cli.errors import CliError, existing_file, first_line, output_file
from mixq.cli.formatting import HelpFormatter
from mixq.export.backend import format_for


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``inspect`` and its options to the ``mixq`` subparsers."""
    p = sub.add_parser("inspect", parents=parents, help="quantized nodes, ONNX Runtime kernels and size by dtype",
                       description="Show which compute nodes of an ONNX model are quantized, which integer kernels "
                                   "ONNX Runtime (CPU) uses after its graph optimisation, and the size by dtype.",
                       epilog="example:\n  mixq inspect model_int8.onnx --json model_int8.inspect.json",
                       formatter_class=HelpFormatter)
    p.add_argument("model", metavar="MODEL.onnx", help="an ONNX or .tflite file")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``mixq inspect``; bad input raises :class:`~mixq.cli.errors.CliError`. Returns the exit code."""
    from mixq.report import atomic_write_text

    path = existing_file(args.model, "model")
    out = output_file(args.json, "--json", ".json", [path]) if args.json else None
    fmt = format_for(path)
    if not fmt.available():
        raise CliError(f"inspecting {path.name} needs the {fmt.title} extra, which is not installed",
                       fmt.install_hint or "")
    try:
        info = fmt.inspect(path)
    except Exception as err:
        raise CliError(f"cannot load {path} as {fmt.noun} ({first_line(err)})", fmt.file_hint) from err
    print(info)
    if out is not None:
        atomic_write_text(out, json.dumps(info.to_dict(), indent=2) + "\n")
        print(f"wrote {out}")
    return 0

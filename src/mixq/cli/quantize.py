"""``mixq quantize``: quantize a user's model (FACTORY + weights + calibration data) and export it to ONNX."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from mixq.cli.errors import CliError, first_line, output_file
from mixq.cli.formatting import HelpFormatter
from mixq.cli.loading import load_batches, load_factory, load_weights, parse_ints

OBSERVERS = ("minmax", "percentile", "mse", "entropy", "moving_average")
EPILOG = """examples:
  mixq quantize --model torchvision.models:resnet18 --mode dynamic --example-shape 1,3,224,224 --output r18.onnx
  mixq quantize --model mynets.py:build --weights net.pt --mode static --calib calib.npz --output net_int8.onnx"""


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("quantize", parents=parents, epilog=EPILOG, formatter_class=HelpFormatter,
                       help="quantize your model and export it to ONNX (plus a JSON sidecar)",
                       description="Build your model, load its weights, quantize it with mixq.quantize, print the "
                                   "per-layer summary, and write the ONNX file plus a JSON sidecar describing it.")
    p.add_argument("--model", required=True, metavar="MODULE:FACTORY",
                   help="importable function returning the nn.Module (package.module:fn or path/to/file.py:fn)")
    p.add_argument("--weights", metavar="W.pt", help="state_dict saved with torch.save (loaded with weights_only)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow --weights to hold arbitrary pickled objects (only for files you trust)")
    p.add_argument("--mode", required=True, choices=("static", "dynamic", "weight_only", "fp16"))
    p.add_argument("--calib", metavar="DATA",
                   help="inputs: .npy/.npz file (first axis = samples) or MODULE:CALLABLE returning batches; "
                        "required for --mode static")
    p.add_argument("--batch-size", type=int, default=32, help="calibration batch size for .npy/.npz (default 32)")
    p.add_argument("--max-calib-batches", type=int, default=None, metavar="N", help="calibrate on at most N batches")
    p.add_argument("--observer", choices=OBSERVERS, default="minmax", help="static-mode range observer")
    p.add_argument("--bits", type=int, default=8, help="weight bits (weight_only: 4 or 8; default 8)")
    p.add_argument("--group-size", type=int, default=None, help="per-group weight scales (weight_only 4-bit)")
    p.add_argument("--exclude", default="", metavar="NAMES", help="comma-separated layer name patterns to keep float")
    p.add_argument("--example-shape", metavar="1,3,224,224",
                   help="input shape for export (default: one sample of --calib)")
    p.add_argument("--output", required=True, metavar="MODEL.onnx", help="ONNX file to write")
    p.set_defaults(run=run)


def _example(args: argparse.Namespace, batches: list[Any] | None) -> Any:
    if args.example_shape:
        shape = parse_ints(args.example_shape, "--example-shape", "1,3,224,224")
        if batches and isinstance(batches[0], torch.Tensor) and list(batches[0].shape[1:]) != shape[1:]:
            raise CliError(f"--example-shape {shape} disagrees with the --calib data, shaped "
                           f"{[len(batches[0]), *batches[0].shape[1:]]}", "make them agree, or drop --example-shape")
        return torch.randn(shape)
    if batches:
        first = batches[0]
        if isinstance(first, torch.Tensor):
            return first[:1]
        if isinstance(first, (tuple, list)):
            return tuple(t[:1] for t in first)
        return first
    raise CliError("the input shape is unknown", "pass --example-shape (e.g. 1,3,224,224) or --calib DATA")


def _probe(model: torch.nn.Module, example: Any, source: str) -> None:
    from mixq.quant.calibration import call_model, describe

    try:
        with torch.no_grad():
            call_model(model, example)
    except Exception as err:
        raise CliError(f"the model rejects inputs shaped {describe(example)} from {source} ({type(err).__name__}: "
                       f"{first_line(err)})",
                       "pass data shaped like the model's input, batch first (e.g. N,3,224,224 for images)") from err


def _input_files(args: argparse.Namespace) -> list[Path]:
    files = [args.model.partition(":")[0], args.weights, args.calib]
    return [Path(f) for f in files if f and f.endswith((".py", ".pt", ".pth", ".bin", ".npy", ".npz"))]


def run(args: argparse.Namespace) -> int:
    import mixq

    # Cheap checks first, so a typo fails in a second rather than after loading the model.
    output = output_file(args.output, "--output", ".onnx", _input_files(args))
    sidecar = output_file(output.with_suffix(".mixq.json"), "sidecar", ".json", _input_files(args))
    if args.mode == "static" and not args.calib:
        raise CliError("--mode static needs calibration data", "pass --calib DATA (a few hundred representative "
                       "inputs), or use --mode dynamic, which needs none")
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {args.batch_size}", "pass e.g. --batch-size 32")
    model = load_factory(args.model)
    if args.weights:
        load_weights(model, args.weights, args.model, trust_pickle=args.trust_pickle)
    batches = None
    if args.calib:
        batches = load_batches(args.calib, args.batch_size, args.max_calib_batches)
        if not batches:
            raise CliError(f"--calib {args.calib} gave no batches", "pass at least one input sample")
    example = _example(args, batches)
    _probe(model, example, "--example-shape" if args.example_shape else "--calib")
    if batches and args.example_shape:
        _probe(model, batches[0], "--calib")
    exclude = [e.strip() for e in args.exclude.split(",") if e.strip()]
    try:
        qmodel = mixq.quantize(model, args.mode, calib_data=batches if args.mode == "static" else None,
                               observer=args.observer, bits=args.bits, group_size=args.group_size, exclude=exclude,
                               example_inputs=example, max_calib_batches=args.max_calib_batches)
    except (ValueError, TypeError) as err:
        raise CliError(f"mixq.quantize rejected the request: {first_line(err)}",
                       "adjust the options named above") from err
    print(qmodel.mixq_summary)
    mixq.export_onnx(qmodel, example, output)
    _write_sidecar(sidecar, args, qmodel, output)
    print(f"wrote {output} ({output.stat().st_size / 1024:.1f} KB) and {sidecar}")
    return 0


def _write_sidecar(path: Path, args: argparse.Namespace, qmodel: torch.nn.Module, output: Path) -> None:
    from mixq import __version__
    from mixq.report import atomic_write_text

    data = {
        "mixq_version": __version__,
        "onnx_file": output.name,
        "onnx_bytes": output.stat().st_size,
        "command": ["mixq", *sys.argv[1:]],
        "model": args.model,
        "weights": args.weights,
        "calib": args.calib,
        "example_shape": args.example_shape,
        "config": qmodel.mixq_config.to_dict(),
        "summary": qmodel.mixq_summary.to_dict(),
    }
    atomic_write_text(path, json.dumps(data, indent=2, default=list) + "\n")

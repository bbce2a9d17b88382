"""``mixq autoquant``: choose per-layer precisions for a user's model with ``mixq.autoquantize`` and export it."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from mixq.cli.errors import CliError, first_line, output_file
from mixq.cli.exporting import decoder_info, export_model
from mixq.cli.formatting import HelpFormatter
from mixq.cli.loading import add_model_options, input_files, load_callable, load_inputs, parse_ints
from mixq.cli.sidecar import write_sidecar
from mixq.report.files import StagedOutputs

EPILOG = """examples:
  mixq autoquant --model nets.py:build --weights net.pt --calib calib.npz --eval nets.py:val_accuracy \\
      --max-drop 0.01 --output net_auto.onnx
  mixq autoquant --model nets.py:build --calib nets.py:batches --eval nets.py:score --objective size \\
      --max-drop 1 --relative --output net_small.onnx

--eval names a function taking the model and returning your metric (higher is better), e.g.
  def val_accuracy(model):
      with torch.no_grad():
          return (model(X_VAL).argmax(1) == Y_VAL).float().mean().item()"""


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``autoquant`` and its options to the ``mixq`` subparsers."""
    p = sub.add_parser("autoquant", parents=parents, epilog=EPILOG, formatter_class=HelpFormatter,
                       help="choose per-layer precisions within an accuracy budget, then export to ONNX",
                       description="Calibrate once, rank layers by the error each causes alone, and search "
                                   "per-layer precisions (int8 -> better observers -> dynamic -> fp16 -> fp32) until "
                                   "your metric is within --max-drop of fp32; write the ONNX file, a JSON sidecar "
                                   "and the report (Markdown, JSON, PNG) next to it.")
    add_model_options(p)
    p.add_argument("--eval", required=True, metavar="MODULE:FN",
                   help="function(model) -> float, your metric (higher is better)")
    p.add_argument("--max-drop", type=float, default=0.01,
                   help="allowed drop of the metric vs fp32 (absolute, or with --relative a fraction; default 0.01)")
    p.add_argument("--relative", action="store_true", help="--max-drop is a fraction of the fp32 metric")
    p.add_argument("--objective", choices=("latency", "size", "accuracy"), default="latency",
                   help="what to minimise within the budget: latency on --runtime here (default), file size, or "
                        "error")
    p.add_argument("--runtime", default="ort", metavar="NAME",
                   help="the runtime latency is measured on, for --objective latency and the report: ort (default), "
                        "openvino, or openvino:f32 / openvino:bf16 (OpenVINO's precision hint)")
    p.add_argument("--max-evals", type=int, default=16, metavar="N", help="calls of --eval in all (default 16)")
    p.add_argument("--batch", default=None, metavar="B1,B2",
                   help="batch sizes the model will serve, each timed for --objective latency and the report "
                        "(fp32, mixq dynamic, all-int8 static and the choice side by side), built from the example "
                        "along its first axis (default 1,32)")
    p.add_argument("--strict", action="store_true", help="exit 1 when no configuration meets the target")
    p.add_argument("--output", required=True, metavar="MODEL.onnx", help="ONNX file to write")
    p.set_defaults(run=run)


def _check_runtime(name: str, output: Any) -> None:
    """``--runtime`` must run the .onnx file autoquant writes, and be installed."""
    from mixq.export.backend import runtime_for

    try:
        runtime = runtime_for(output, runtime=name)
    except ValueError as err:
        raise CliError(f"--runtime {name}: {err}", "autoquant writes an ONNX file; pick a runtime for it") from err
    if not runtime.available():
        raise CliError(f"--runtime {name} needs {runtime.title}, which is not installed", runtime.install_hint or "")


def run(args: argparse.Namespace) -> int:
    """Run ``mixq autoquant``; bad input raises :class:`~mixq.cli.errors.CliError`. Returns the exit code."""
    import mixq
    output = output_file(args.output, "--output", ".onnx", input_files(args))
    sidecar = output_file(output.with_suffix(".mixq.json"), "sidecar", ".json", input_files(args))
    stem = f"{output.stem}.autoquant"
    for suffix in (".md", ".json", ".png"):
        output_file(output.with_name(stem + suffix), "report", suffix, input_files(args))
    if not (args.calib or args.calib_text):
        raise CliError("autoquant needs calibration data", "pass --calib DATA (or with --hf, --calib-text FILE: a "
                       "few hundred representative inputs)")
    deploy = None if args.batch is None else parse_ints(args.batch, "--batch", "1,32")
    _check_runtime(args.runtime, output)
    eval_fn = load_callable(args.eval, "--eval")
    model, batches, example = load_inputs(args)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = mixq.autoquantize(model, batches, eval_fn, max_drop=args.max_drop, relative=args.relative,
                                       example_inputs=example, objective=args.objective, max_evals=args.max_evals,
                                       deploy_shapes=deploy, progress=True, runtime=args.runtime)
    except mixq.EvalFnError as err:
        raise CliError(f"--eval {args.eval} failed: {first_line(err)}", "fix the metric function") from err
    except (ValueError, TypeError) as err:
        raise CliError(f"mixq.autoquantize rejected the request: {first_line(err)}",
                       "adjust the options named above") from err
    for w in caught:
        print(f"mixq autoquant: warning: {w.message}", file=sys.stderr)
    print(result.report)
    with StagedOutputs(output.parent) as stage:  # ONNX file, sidecar and report: all written, or none
        staged = export_model(result.model, example, stage.path(output.name), args)
        written = result.report.write(staged.parent, stem=stem)
        config = None if result.config is None else result.config.to_dict()  # replay: QuantConfig.from_dict
        write_sidecar(stage.path(sidecar.name), args, staged, eval=args.eval, met=result.report.met,
                      precisions=result.report.precisions, config=config, decoder=decoder_info(staged, args))
    paths = {kind: output.parent / p.name for kind, p in written.items()}
    print(f"wrote {output} ({output.stat().st_size / 1024:.1f} KB), {sidecar} and the report "
          f"{paths['markdown']} (+ .json, .png)")
    return 1 if args.strict and not result.report.met else 0

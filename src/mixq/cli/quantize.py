"""``mixq quantize``: quantize a user's model (FACTORY + weights + calibration data) and export it to ONNX or to
LiteRT (``--format tflite``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mixq.cli.errors import CliError, first_line, output_file
from mixq.cli.exporting import decoder_info, export_model
from mixq.cli.formatting import HelpFormatter
from mixq.cli.loading import add_model_options, input_files, load_inputs
from mixq.cli.refusals import check_model, check_tflite_options
from mixq.cli.sidecar import write_sidecar
from mixq.export.backend import Format, format_for, format_runtimes, formats, get_format, get_runtime, runtimes
from mixq.export.onnx.export import MIN_OPSET
from mixq.quant.observers import observer_names
from mixq.quant.spec import MODES, SMOOTH_LAYERNORM, QuantConfig
from mixq.quant.weight_only.methods import method_names
from mixq.report.files import StagedOutputs

EPILOG = """examples:
  mixq quantize --model torchvision.models:resnet18 --mode dynamic --example-shape 1,3,224,224 --output r18.onnx
  mixq quantize --model mynets.py:build --weights net.pt --mode static --calib calib.npz --output net_int8.onnx
  mixq quantize --hf ./my-bert --mode dynamic --output bert_int8.onnx
  mixq quantize --hf ./my-bert --mode fp32 --output bert_fp32.onnx   # the float baseline to bench against
  mixq quantize --hf ./my-bert --hf-task sequence-classification --mode static --calib-text texts.txt \\
      --max-length 128 --output bert_static.onnx
  mixq quantize --hf ./my-llama --hf-task causal-lm --mode weight_only --bits 4 --method gptq \\
      --calib-text texts.txt --output llama_int4.onnx   # a key/value-cache decoder (mixq.generate_onnx)
  mixq quantize --model mynets.py:build --weights net.pt --mode static --calib calib.npz --format tflite \\
      --io-dtype int8 --output net_int8.tflite"""
FORMAT_OPTIONS = {"io_dtype": ("--io-dtype", "float32"), "nhwc": ("--nhwc", False)}  # format-specific flags
FLOAT_MODE = "fp32"  # no quantization: the float model exported as it is
_QUANT_OPTIONS = (("--observer", "observer", None), ("--bits", "bits", 8), ("--group-size", "group_size", None),
                  ("--exclude", "exclude", ""), ("--smoothquant", "smoothquant", SMOOTH_LAYERNORM),
                  ("--method", "method", "rtn"), ("--weight-scheme", "weight_scheme", "sym"),
                  ("--weights-granularity", "weights_granularity", None), ("--reduce-range", "reduce_range", "auto"),
                  ("--runtime", "runtime", None), ("--runtime-aware", "runtime_aware", "on"))


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``quantize`` and its options to the ``mixq`` subparsers."""
    p = sub.add_parser("quantize", parents=parents, epilog=EPILOG, formatter_class=HelpFormatter,
                       help="quantize your model and export it to ONNX (plus a JSON sidecar)",
                       description="Build your model, load its weights, quantize it with mixq.quantize, print the "
                                   "per-layer summary, and write the ONNX file plus a JSON sidecar describing it.")
    add_model_options(p)
    p.add_argument("--mode", required=True, choices=(*MODES, FLOAT_MODE),
                   help=f"how to quantize; {FLOAT_MODE} exports the float model unquantized (the baseline file)")
    p.add_argument("--observer", choices=observer_names(), default=None,
                   help="static-mode range observer (default minmax; refused in other modes)")
    p.add_argument("--bits", type=int, default=8, help="weight bits (weight_only: 2, 3, 4 or 8; default 8)")
    p.add_argument("--group-size", type=int, default=None,
                   help="per-group weight scales (weight_only below 8 bits; default 128)")
    p.add_argument("--method", choices=method_names(), default="rtn",
                   help="weight_only: how integer weights are chosen; gptq and awq need calibration data "
                        "(default rtn, round to nearest)")
    p.add_argument("--weight-scheme", choices=("sym", "asym"), default="sym",
                   help="weight_only: symmetric weights, or asymmetric with zero points (default sym)")
    p.add_argument("--weights-granularity", choices=("per-channel", "per-tensor"), default=None,
                   help="static/dynamic: one weight scale per output channel (default) or one per layer")
    p.add_argument("--reduce-range", choices=("auto", "on", "off"), default="auto",
                   help="static/dynamic 8-bit: 7-bit weights, which x86 CPUs without VNNI need (their uint8 x int8 "
                        "kernels saturate); auto: on where this CPU lacks VNNI (default auto)")
    p.add_argument("--runtime", choices=sorted(r.name for r in runtimes()), default=None,
                   help="static/dynamic/weight_only: the runtime the file is for (default: the format's, ort for "
                        ".onnx, litert for .tflite); static/dynamic layers whose int8 kernel is slower than float "
                        "there stay float (timed here once per shape, cached); litert: layers compute as its "
                        "kernels do")
    p.add_argument("--runtime-aware", choices=("on", "off"), default="on",
                   help="static/dynamic: off keeps every layer int8 even where its int8 kernel is slower on the "
                        "runtime (default on)")
    p.add_argument("--exclude", default="", metavar="NAMES", help="comma-separated layer name patterns to keep float")
    p.add_argument("--smoothquant", type=_alpha, default=SMOOTH_LAYERNORM, metavar="ALPHA|auto|layernorm|off",
                   help="static/dynamic: SmoothQuant before quantizing (alpha in [0, 1], or 'auto' per layer); "
                        "needs --calib; default 'layernorm': 'auto' in static mode on models where a LayerNorm "
                        "feeds Linears (transformers), off otherwise")
    p.add_argument("--output", required=True, metavar="MODEL.onnx", help="ONNX or .tflite file to write")
    p.add_argument("--opset", type=int, default=None, metavar="N",
                   help="onnx only: the ONNX opset to write (>= 13; default: the exporter's)")
    p.add_argument("--softmax-floor", choices=("auto", "on", "off"), default="auto",
                   help="onnx only: floor masked attention Softmax inputs so ONNX Runtime's exp does not underflow "
                        "through slow denormals (the same outputs; faster on padded or causal batches, 11-18%% "
                        "slower where nothing is masked); auto: for ONNX Runtime files on a CPU measured slow at "
                        "them (default auto)")
    p.add_argument("--format", choices=sorted(f.name for f in formats()), default=None,
                   help="onnx (ONNX Runtime) or tflite (LiteRT: static -> full-integer, dynamic -> dynamic-range, "
                        "fp16 -> float16); default: from the --output suffix")
    p.add_argument("--io-dtype", choices=("float32", "int8", "uint8"), default="float32",
                   help="tflite only: integer inputs/outputs for a full-integer file (default float32)")
    p.add_argument("--nhwc", action="store_true", help="tflite only: channels-last inputs and outputs")
    p.set_defaults(run=run)


def _reduce_range(args: argparse.Namespace) -> bool:
    """``--reduce-range``: on, off, or (auto) on for 8-bit static/dynamic weights where this CPU lacks VNNI."""
    if args.reduce_range != "auto":
        return args.reduce_range == "on"
    from mixq.quant.cpu import int8_needs_reduce_range

    needed = args.mode in ("static", "dynamic") and args.bits == 8 and int8_needs_reduce_range()
    if needed:
        print("mixq: this CPU has no VNNI, so weights keep to 7 bits (--reduce-range auto); pass --reduce-range off "
              "for files served on VNNI machines")
    return needed


def _alpha(text: str) -> float | str | None:
    """``--smoothquant`` value: ``auto``, ``layernorm``, ``off`` or a number (range checked by ``mixq.quantize``)."""
    if text in ("auto", SMOOTH_LAYERNORM):
        return text
    if text == "off":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], 'auto', 'layernorm' or 'off', got "
                                         f"{text!r}") from None


def _runtime(args: argparse.Namespace, fmt: Format) -> dict[str, object]:
    """``runtime``/``runtime_aware`` for the config: ``--runtime`` (which must run ``fmt``'s files), by default the
    format's runtime in the modes it changes (``Runtime.affects``: static and dynamic; weight_only for LiteRT, whose
    kernels round activations per row); other modes get none unless asked (the config refuses it)."""
    if args.runtime is not None and get_runtime(args.runtime).format != fmt.name:
        names = ", ".join(r.name for r in format_runtimes(fmt.name))
        raise CliError(f"--runtime {args.runtime} does not run {fmt.title} files",
                       f"pass a runtime for {fmt.title} ({names}) or leave --runtime out")
    runtime = args.runtime
    default = format_runtimes(fmt.name)[0]
    if runtime is None and default.affects(args.mode):
        runtime = default.name
    return {"runtime": runtime, "runtime_aware": args.runtime_aware == "on"}


def _config(args: argparse.Namespace, fmt: Format) -> QuantConfig:
    """The ``QuantConfig`` the options ask for; its validation is the one that speaks for a bad option."""
    exclude = [e.strip() for e in args.exclude.split(",") if e.strip()]
    runtime = _runtime(args, fmt)
    try:
        return QuantConfig.from_options(args.mode, observer=args.observer, bits=args.bits, group_size=args.group_size,
                                        exclude=exclude, smoothquant=args.smoothquant, method=args.method,
                                        symmetric=args.weight_scheme == "sym",
                                        per_channel=args.weights_granularity != "per-tensor",
                                        reduce_range=_reduce_range(args), **runtime)
    except (ValueError, TypeError) as err:
        raise CliError(f"mixq.quantize rejected the request: {first_line(err)}",
                       "adjust the options named above") from err


def _check_format_options(args: argparse.Namespace, fmt: Format) -> None:
    """Refuse the flags the output's format does not take (``--io-dtype``/``--nhwc`` on ONNX, ``--opset`` on
    LiteRT) and the combinations it cannot write, before anything loads."""
    refused = [key for key, (_, default) in FORMAT_OPTIONS.items()
               if getattr(args, key) != default and key not in fmt.options]
    if refused:
        takers = [f for f in formats() if set(refused) <= set(f.options)]
        flags = " and ".join(flag for flag, _ in FORMAT_OPTIONS.values())
        raise CliError(f"{flags} apply to {' and '.join(f.title for f in takers)} files",
                       f"add {' or '.join(f'--format {f.name}' for f in takers)}, or drop them for {fmt.title}")
    check_tflite_options(args, fmt.name)
    if args.opset is not None and "opset" not in fmt.options:
        raise CliError(f"--opset applies to ONNX files, not {fmt.title} ones", "drop it")
    if args.softmax_floor != "auto" and "softmax_floor" not in fmt.options:
        raise CliError(f"--softmax-floor applies to ONNX files, not {fmt.title} ones", "drop it")
    if args.opset is not None and args.opset < MIN_OPSET:
        raise CliError(f"--opset {args.opset} cannot express per-channel QuantizeLinear/DequantizeLinear",
                       f"pass --opset {MIN_OPSET} or newer, or leave it out")


def _check_data(args: argparse.Namespace, config: QuantConfig) -> None:
    """Refuse a request that needs calibration data when none is given, before the model loads."""
    has_data = bool(args.calib or args.calib_text)
    if config.needs_calibration and not has_data:
        raise CliError("--mode static needs calibration data", "pass --calib DATA (or with --hf, --calib-text FILE: "
                       "a few hundred representative inputs), or use --mode dynamic, which needs none")
    if config.smoothquant is not None and not has_data:
        raise CliError("--smoothquant needs calibration data (activation statistics)",
                       "pass --calib DATA (or --calib-text FILE with --hf), or drop --smoothquant")


def run(args: argparse.Namespace) -> int:
    """Run ``mixq quantize``; bad input raises :class:`~mixq.cli.errors.CliError`. Returns the exit code."""
    import mixq

    # Cheap checks first, so a typo fails in a second rather than after loading the model.
    fmt = get_format(args.format) if args.format else format_for(args.output)
    _check_format_options(args, fmt)
    output = output_file(args.output, "--output", fmt.suffix, input_files(args))
    if not fmt.available():
        raise CliError(f"--format {fmt.name} needs the {fmt.title} extra, which is not installed",
                       fmt.install_hint or "")
    sidecar = output_file(output.with_suffix(".mixq.json"), "sidecar", ".json", input_files(args))
    if args.mode == FLOAT_MODE:
        return _export_float(args, fmt, output, sidecar)
    config = _config(args, fmt)  # the options' rules are the config's: a bad one fails before the model loads
    _check_data(args, config)
    model, batches, example = load_inputs(args)
    check_model(args, fmt.name, model, example)
    if config.method.needs_data and batches is None:
        raise CliError(f"--method {args.method} needs calibration data",
                       ("pass --calib-text FILE (a few dozen representative texts, one per line) or --calib DATA"
                        if args.hf else "pass --calib DATA (a few dozen representative batches)")
                       + ", or use --method rtn")
    try:
        qmodel = mixq.quantize(model, config, calib_data=batches if config.needs_data else None,
                               example_inputs=example, max_calib_batches=args.max_calib_batches)
    except (ValueError, TypeError) as err:
        raise CliError(f"mixq.quantize rejected the request: {first_line(err)}",
                       "adjust the options named above") from err
    print(qmodel.mixq_summary)
    return _export(qmodel, example, fmt, output, sidecar, args, config=qmodel.mixq_config.to_dict(),
                   summary=qmodel.mixq_summary.to_dict())


def _export_float(args: argparse.Namespace, fmt: Format, output: Path, sidecar: Path) -> int:
    """``--mode fp32``: the float model exported unquantized (the baseline file); quantization options refused."""
    used = [flag for flag, name, default in _QUANT_OPTIONS if getattr(args, name) != default]
    if used:
        raise CliError(f"{', '.join(used)} choose how to quantize, but --mode {FLOAT_MODE} exports the float "
                       "model unquantized", "drop them, or choose a quantization --mode")
    model, _, example = load_inputs(args)
    check_model(args, fmt.name, model, example)
    print(f"mixq {FLOAT_MODE}: {type(model).__name__} exported unquantized (the float baseline)")
    return _export(model.eval(), example, fmt, output, sidecar, args, config={"mode": FLOAT_MODE}, summary=None)


def _export(qmodel: Any, example: Any, fmt: Format, output: Path, sidecar: Path, args: argparse.Namespace,
            config: dict[str, Any], summary: dict[str, Any] | None) -> int:
    """Write the model file and its sidecar (both, or neither); returns the exit code."""
    with StagedOutputs(output.parent) as stage:  # the model file and its sidecar: both written, or neither
        staged = export_model(qmodel, example, stage.path(output.name), args, fmt)
        write_sidecar(stage.path(sidecar.name), args, staged, example_shape=args.example_shape,
                      config=config, summary=summary, decoder=decoder_info(staged, args))
    print(f"wrote {output} ({output.stat().st_size / 1024:.1f} KB) and {sidecar}")
    return 0

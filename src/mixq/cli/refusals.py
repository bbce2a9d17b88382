"""Option and format combinations that cannot work, refused before any work (exit 2, one line).

``export_tflite`` / ``export_decoder_tflite`` would refuse each of these too, but only after quantization (exit 1,
minutes later): integer inputs/outputs of a model that is not full-integer or that takes named inputs (``--hf``:
token ids feed no quantized layer directly), channels-last I/O of a ``--hf`` model, weight-only grids LiteRT's
integer weights cannot hold (zero points, 8-bit groups, group sizes other than 32-256), and a key/value-cache decoder
in a mode other than weight_only / fp32.
A ``--hf-task causal-lm`` model that returns no key/value cache is refused here too, not after quantization.
"""

from __future__ import annotations

import argparse
from typing import Any

from torch import nn

from mixq.cli.errors import CliError


def check_tflite_options(args: argparse.Namespace, fmt: str) -> None:
    """The combinations the options alone rule out (before the model loads)."""
    if fmt != "tflite":
        return
    if args.io_dtype != "float32" and args.mode != "static":
        raise CliError(f"--io-dtype {args.io_dtype} needs a full-integer LiteRT file, which only --mode static "
                       f"makes (--mode {args.mode} keeps float inputs and outputs)",
                       "use --mode static with --calib, or drop --io-dtype")
    if args.mode == "weight_only":
        _check_litert_weight_only(args)
    if getattr(args, "hf", None) and (args.io_dtype != "float32" or args.nhwc):
        flag = f"--io-dtype {args.io_dtype}" if args.io_dtype != "float32" else "--nhwc"
        raise CliError(f"{flag} applies to image or feature inputs; a --hf model's .tflite takes token ids by name, "
                       "with float outputs", f"drop {flag}")
    if getattr(args, "hf", None) and getattr(args, "hf_task", None) == "causal-lm":
        if args.mode not in ("weight_only", "fp32"):
            raise CliError(f"a LiteRT key/value-cache decoder (--hf-task causal-lm) takes weight-only layers or "
                           f"none, not --mode {args.mode}", "use --mode weight_only (or fp32), or write an .onnx file")
        if args.nhwc:
            raise CliError("--nhwc applies to image inputs, not a decoder's token ids", "drop --nhwc")


def _check_litert_weight_only(args: argparse.Namespace) -> None:
    """Weight-only grids LiteRT's integer weights cannot hold (``mixq.export.tflite.weight_only.refusal``)."""
    from mixq.export.tflite.weight_only import BLOCK_SIZES

    if args.weight_scheme == "asym":
        raise CliError("LiteRT's integer weights have no zero points, so --weight-scheme asym cannot be written as "
                       ".tflite", "use --weight-scheme sym, or write an .onnx file")
    if args.bits == 8 and args.group_size is not None:
        raise CliError("LiteRT has no kernel for 8-bit weight groups", "drop --group-size (8-bit per-channel) or "
                       "use --bits 4")
    if args.bits < 8 and args.group_size is not None and args.group_size not in BLOCK_SIZES:
        raise CliError(f"LiteRT's blockwise int4 weights take groups of {', '.join(map(str, BLOCK_SIZES))}, not "
                       f"--group-size {args.group_size}", "pick one of those, or write an .onnx file")


def check_model(args: argparse.Namespace, fmt: str, model: nn.Module, example: Any) -> None:
    """The combinations the loaded model and example rule out (before quantization starts): a key/value-cache
    decoder export (``--hf-task causal-lm``) of a model without a cache."""
    from mixq.cli.exporting import exports_decoder

    if fmt in ("onnx", "tflite") and exports_decoder(args):
        from mixq.export.onnx.decoder import CachedDecoder
        from mixq.export.onnx.decoder_checks import check_causal_lm

        try:
            check_causal_lm(CachedDecoder(model), model)
        except TypeError as err:
            raise CliError(str(err).partition("; ")[0], "pass a causal LM's directory, or another --hf-task") \
                from err

"""Option and format combinations that cannot work, refused before any work (exit 2, one line).

``export_tflite`` would refuse each of these too, but only after quantization (exit 1, minutes later): integer
inputs/outputs of a model that is not full-integer or that takes named inputs (``--hf``: token ids feed no
quantized layer directly), channels-last I/O of a ``--hf`` model, weight-only layers (LiteRT has no form for
them) and a key/value-cache decoder.
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
        raise CliError("LiteRT has no form for weight-only layers, so --mode weight_only cannot be written as "
                       ".tflite", "use --mode dynamic (int8 weights) or static for LiteRT, or write an .onnx file")
    if getattr(args, "hf", None) and (args.io_dtype != "float32" or args.nhwc):
        flag = f"--io-dtype {args.io_dtype}" if args.io_dtype != "float32" else "--nhwc"
        raise CliError(f"{flag} applies to image or feature inputs; a --hf model's .tflite takes token ids by name, "
                       "with float outputs", f"drop {flag}")
    if getattr(args, "hf", None) and getattr(args, "hf_task", None) == "causal-lm":
        raise CliError("a key/value-cache decoder (--hf-task causal-lm) has no .tflite form in mixq yet",
                       "write an .onnx file (--output MODEL.onnx), which mixq.generate_onnx runs")


def check_model(args: argparse.Namespace, fmt: str, model: nn.Module, example: Any) -> None:
    """The combinations the loaded model and example rule out (before quantization starts): a key/value-cache
    decoder export (``--hf-task causal-lm``) of a model without a cache."""
    from mixq.cli.exporting import exports_decoder

    if fmt == "onnx" and exports_decoder(args):
        from mixq.export.onnx.decoder import CachedDecoder
        from mixq.export.onnx.decoder_checks import check_causal_lm

        try:
            check_causal_lm(CachedDecoder(model), model)
        except TypeError as err:
            raise CliError(str(err).partition("; ")[0], "pass a causal LM's directory, or another --hf-task") \
                from err

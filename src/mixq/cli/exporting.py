"""The commands' export through the output's format (``mixq.export.backend``): for ONNX, ``mixq.export_onnx``
(outputs named like the model's), or for ``--hf-task causal-lm`` the key/value-cache decoder
(``mixq.export_decoder_onnx``, or ``mixq.export_decoder_tflite`` for a .tflite output); a failure at export (a
shape the model cannot be traced at) reported as one line."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from torch import nn

from mixq.cli.errors import CliError, first_line
from mixq.cli.failures import disk_error
from mixq.export.backend import Format, get_format

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def exports_decoder(args: argparse.Namespace) -> bool:
    """Whether the command writes a key/value-cache decoder: a Hugging Face causal LM (``--hf-task causal-lm``)."""
    return bool(getattr(args, "hf", None)) and getattr(args, "hf_task", None) == "causal-lm"


def export_model(model: nn.Module, example: Any, output: Path, args: argparse.Namespace,
                 fmt: Format | None = None) -> Path:
    """Write ``model`` to ``output`` in ``fmt`` (default ONNX), passing the command's options the format takes:
    for ONNX, with ``--hf`` the outputs are named like the model's (``last_hidden_state``, ``logits``...), and a
    causal LM (``--hf-task causal-lm``) is written as the key/value-cache decoder ONNX Runtime generates with token
    by token (symbolic batch, sequence and past length), and ``--softmax-floor``; for LiteRT, ``--io-dtype`` and
    ``--nhwc``."""
    import mixq
    from mixq.quant.calibration import describe

    fmt = fmt or get_format("onnx")
    decoder = exports_decoder(args) and "decoder" in fmt.options
    given = {"decoder": decoder, "opset": getattr(args, "opset", None),
             "io_dtype": getattr(args, "io_dtype", "float32"), "nhwc": getattr(args, "nhwc", False),
             "softmax_floor": {"auto": None, "on": True, "off": False}[getattr(args, "softmax_floor", "auto")]}
    try:
        return fmt.export(model, example, output, **{k: v for k, v in given.items() if k in fmt.options})
    except mixq.ExportError as err:
        if disk_error(err):
            raise  # a full disk is a runtime failure (exit 1), not something to fix in the options
        if fmt.name != "onnx":  # the hints below are about torch.export tracing
            raise
        cause = err
        while cause.__cause__ is not None:  # the innermost error names the problem (the exporter's wrap it)
            cause = cause.__cause__
        reason = _ANSI.sub("", first_line(cause))
        if decoder:
            raise CliError(f"the model could not be exported to ONNX as a key/value-cache decoder "
                           f"({type(cause).__name__}: {reason})", "torch.export must trace it with a Hugging Face "
                           "DynamicCache: see the exporter's traceback with --debug") from err
        raise CliError(f"the model could not be exported to ONNX with inputs shaped {describe(example)} "
                       f"({type(cause).__name__}: {reason})",
                       "torch.export must trace the model at these shapes: try another --example-shape (or --calib "
                       "sample), or see the exporter's traceback with --debug") \
            from err


def decoder_info(path: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """For the sidecar: the layout of the key/value-cache decoder ``path`` (see
    ``mixq.export.onnx.decoder.decoder_layout``) when the command wrote one, else None; printed as one line."""
    if not exports_decoder(args) or path.suffix not in (".onnx", ".tflite"):
        return None
    if path.suffix == ".tflite":
        from mixq.export.tflite.decoder_run import decoder_layout_tflite, describe_decoder_tflite

        layout = decoder_layout_tflite(path)
        print(f"{path.name}: {describe_decoder_tflite(layout)}")
        return layout
    import onnx

    from mixq.export.onnx.decoder import decoder_layout, describe_decoder

    layout = decoder_layout(onnx.load(str(path), load_external_data=False).graph)
    if layout is not None:
        print(f"{path.name}: {describe_decoder(layout)}")
    return layout

"""The commands' ONNX export: ``mixq.export_onnx`` with the model's output names, and a failure at export (a shape
the model cannot be traced at) reported as one line."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from torch import nn

from mixq.cli.errors import CliError, first_line

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def export_model(model: nn.Module, example: Any, output: Path, args: argparse.Namespace) -> Path:
    """Write ``model`` to ``output`` with ``mixq.export_onnx``; with ``--hf`` the outputs are named like the model's
    (``last_hidden_state``, ``logits``...)."""
    import mixq
    from mixq.quant.calibration import describe

    names = None
    if getattr(args, "hf", None):
        from mixq.cli.hf import output_names

        names = output_names(model, example)
    try:
        return mixq.export_onnx(model, example, output, output_names=names)
    except mixq.ExportError as err:
        cause = err
        while cause.__cause__ is not None:  # the innermost error names the problem (the exporter's wrap it)
            cause = cause.__cause__
        reason = _ANSI.sub("", first_line(cause))
        raise CliError(f"the model could not be exported to ONNX with inputs shaped {describe(example)} "
                       f"({type(cause).__name__}: {reason})",
                       "torch.export must trace the model at these shapes: try another --example-shape (or --calib "
                       "sample), or see the exporter's traceback with --debug") \
            from err

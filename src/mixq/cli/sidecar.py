"""The JSON sidecar written next to each ONNX file a command produces: what made it, and how it was quantized."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def write_sidecar(path: Path, args: argparse.Namespace, output: Path, **fields: Any) -> None:
    """Write ``path`` atomically: mixq version, the ONNX file and its size, the command line and its inputs, then
    the command's own ``fields`` (e.g. the quantization config and summary)."""
    from mixq import __version__
    from mixq.report import atomic_write_text

    data = {
        "mixq_version": __version__,
        "onnx_file": output.name,
        "onnx_bytes": output.stat().st_size,
        "command": ["mixq", *args.argv],
        "model": args.model,
        "weights": args.weights,
        "calib": args.calib,
        **({"hf": args.hf, "hf_task": args.hf_task or "base", "calib_text": args.calib_text}
           if getattr(args, "hf", None) else {}),
        **fields,
    }
    atomic_write_text(path, json.dumps(data, indent=2, default=list) + "\n")

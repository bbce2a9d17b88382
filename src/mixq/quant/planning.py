"""Which layers a quantization run touches: name-pattern exclusion, the per-layer plan (with the reason each
skipped layer stays float), and splitting the first calibration batch off for the dataflow probe.

Shared by post-training quantization (``mixq.quantize``) and quantization-aware training (``mixq.prepare_qat``).
"""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Iterable
from typing import Any

from torch import nn

from mixq.quant.calibration import Batch, CalibrationError, check_iterable
from mixq.quant.modules.conv_args import unsupported_conv_reason
from mixq.quant.modules.embedding import unsupported_embedding_reason
from mixq.quant.spec import QuantConfig
from mixq.quant.summary import QuantizationSummary

QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)
EMBEDDING_MODES = ("static", "dynamic", "weight_only")  # int8 tables; fp16 leaves embeddings float


def excluded(name: str, patterns: Iterable[str]) -> bool:
    """True when ``name`` (or a parent of it) matches one of the fnmatch ``patterns``."""
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*") for p in patterns)


def split_first(calib_data: Any) -> tuple[Batch, Iterable[Batch]]:
    """First batch (for the dataflow probe) and an iterable that still yields every batch, generators included."""
    check_iterable(calib_data)
    iterator = iter(calib_data)
    first = next(iterator, None)
    if first is None:
        raise CalibrationError("calib_data is empty; pass at least one representative batch")
    if iterator is calib_data:  # a one-shot iterator: put the first batch back
        return first, itertools.chain([first], iterator)
    return first, calib_data


def plan(model: nn.Module, cfg: QuantConfig, summary: QuantizationSummary,
         types: tuple[type[nn.Module], ...] = QUANTIZABLE) -> list[str]:
    """Names of the layers to quantize; everything else with weights is reported as staying float, with why."""
    targets = []
    parents = dict(model.named_modules())
    for name, module in model.named_modules():
        if not name:
            continue
        kind = type(module).__name__
        parent = parents.get(name.rpartition(".")[0], model)
        if isinstance(module, types):
            reason = None
            if excluded(name, cfg.exclude):
                reason = "excluded by pattern"
            elif isinstance(parent, nn.MultiheadAttention):
                reason = "read directly by nn.MultiheadAttention (not called as a module)"
            elif isinstance(module, nn.Embedding):
                reason = unsupported_embedding_reason(module)
                if reason is None and cfg.mode not in EMBEDDING_MODES:
                    reason = "fp16 mode keeps embedding tables float32"
            elif not isinstance(module, nn.Linear):
                reason = unsupported_conv_reason(module)
                if reason is None and cfg.mode == "weight_only" and (cfg.weight.bits != 8 or not cfg.weight.symmetric):
                    reason = (f"{cfg.weight.bits}-bit weight-only covers Linear layers (MatMulNBits); use "
                              "symmetric bits=8 for convolutions")
            if reason is None:
                targets.append(name)
            else:
                summary.add(name, kind, "float", reason)
        elif not list(module.children()) and any(True for _ in module.parameters(recurse=False)):
            summary.add(name, kind, "float", f"no quantized kernel for {kind}")
    return targets

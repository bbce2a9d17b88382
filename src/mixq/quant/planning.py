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
from mixq.quant.modules.registry import is_quantizable, registered_base, structural_refusal, unregistered_reason
from mixq.quant.spec import QuantConfig
from mixq.quant.summary import QuantizationSummary


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


def plan(model: nn.Module, cfg: QuantConfig, summary: QuantizationSummary, qat: bool = False) -> list[str]:
    """Names of the registered layer kinds to quantize (with ``qat``: those QAT trains); everything else with
    weights is reported as staying float, with why. Limits of a particular mode (fp16 embeddings, 4-bit
    convolutions) are checked per layer at conversion, where overrides have resolved each layer's mode."""
    targets = []
    parents = dict(model.named_modules())
    for name, module in model.named_modules():
        if not name:
            continue
        kind = type(module).__name__
        parent = parents.get(name.rpartition(".")[0], model)
        if is_quantizable(module, qat=qat):
            reason = None
            if excluded(name, cfg.exclude):
                reason = "excluded by pattern"
            elif isinstance(parent, nn.MultiheadAttention):
                reason = "read directly by nn.MultiheadAttention (not called as a module)"
            else:
                reason = structural_refusal(module)
            if reason is None:
                targets.append(name)
            else:
                summary.add(name, kind, "float", reason)
        elif any(True for _ in module.parameters(recurse=False)) and (
                not list(module.children()) or registered_base(module) is not None):  # e.g. a conv with a pad member
            summary.add(name, kind, "float", unregistered_reason(module))
    return targets

"""Warn about a calibration key the model never reads: a Hugging Face model's ``forward(**kwargs)`` swallows any
name, so a typo (``input_id``) or a column the model does not take (``labels``) is silently dropped."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

from torch import nn


def unknown_keys(model: nn.Module, batch: Any) -> list[str]:
    """The keys of a dict ``batch`` that are not named parameters of ``model.forward`` (empty for other batches
    and for a forward whose signature cannot be read)."""
    if not isinstance(batch, dict):
        return []
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return []
    named = {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return []  # without **kwargs an unknown key fails loudly in the call itself
    return [k for k in batch if k not in named]


def warn_unknown_keys(model: nn.Module, batch: Any, stacklevel: int = 3) -> None:
    """``warnings.warn`` naming the keys of ``batch`` that ``model.forward`` only takes through ``**kwargs``."""
    unknown = unknown_keys(model, batch)
    if unknown:
        warnings.warn(f"calibration batch keys {unknown} are not parameters of {type(model).__name__}.forward, "
                      "which takes them through **kwargs and may ignore them; check their names", stacklevel=stacklevel)

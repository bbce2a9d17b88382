"""Casting the floating tensors inside a model's inputs or outputs while keeping every container's type.

Models return more than tensors: Hugging Face ``ModelOutput`` (an ``OrderedDict`` that is also a dataclass, read
as ``out.loss`` / ``out["loss"]`` / ``out[0]``), dataclasses, namedtuples, ``torch.return_types``, dicts, lists and
tuples nested in each other. :func:`cast_floating` rebuilds only the containers that hold a tensor it cast, each
with its own type (a copy of the original with the changed entries replaced, so extra attributes survive), and
returns everything else as the very same object.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any

import torch

__all__ = ["LOW_PRECISION", "cast_floating"]

LOW_PRECISION: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)
_ATOMS = (str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device)
_warned: set[type] = set()


def cast_floating(value: Any, dtype: torch.dtype, sources: tuple[torch.dtype, ...] = LOW_PRECISION) -> Any:
    """``value`` with every tensor whose dtype is in ``sources`` cast to ``dtype``, containers keeping their types.

    Example:
        >>> import collections
        >>> Pair = collections.namedtuple("Pair", "a b")
        >>> out = cast_floating({"p": Pair(torch.ones(1, dtype=torch.bfloat16), 3)}, torch.float32)
        >>> type(out["p"]).__name__, out["p"].a.dtype, out["p"].b
        ('Pair', torch.float32, 3)
    """
    return _cast(value, dtype, sources)


def _cast(value: Any, dtype: torch.dtype, sources: tuple[torch.dtype, ...]) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.dtype in sources and value.dtype != dtype else value
    if isinstance(value, _ATOMS):
        return value
    if isinstance(value, dict):
        changed = {k: new for k, v in value.items() if (new := _cast(v, dtype, sources)) is not v}
        return _replace_items(value, changed) if changed else value
    if isinstance(value, (tuple, list)):
        items = [_cast(v, dtype, sources) for v in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return _rebuild_sequence(value, items)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changed = {}
        for field in dataclasses.fields(value):
            old = getattr(value, field.name, None)
            if (new := _cast(old, dtype, sources)) is not old:
                changed[field.name] = new
        return _replace_attributes(value, changed) if changed else value
    return value


def _replace_items(mapping: dict, changed: dict) -> dict:
    if type(mapping) is dict:
        return {k: changed.get(k, v) for k, v in mapping.items()}
    try:  # OrderedDict, defaultdict, ModelOutput (whose __setitem__ also sets the attribute): a copy, then update
        new = copy.copy(mapping)
        for key, item in changed.items():
            new[key] = item
    except Exception:
        return _unchanged(mapping)
    return new


def _rebuild_sequence(value: tuple | list, items: list) -> tuple | list:
    kind = type(value)
    if kind is tuple or kind is list:
        return kind(items)
    try:
        if hasattr(kind, "_make"):  # namedtuple
            return kind._make(items)
        if isinstance(value, tuple):  # torch.return_types and other structseq-like tuples
            return kind(items)
        new = copy.copy(value)
        new[:] = items
        return new
    except Exception:
        return _unchanged(value)


def _replace_attributes(obj: Any, changed: dict[str, Any]) -> Any:
    try:
        new = copy.copy(obj)
        for name, item in changed.items():
            object.__setattr__(new, name, item)  # frozen dataclasses too
    except Exception:
        return _unchanged(obj)
    return new


def _unchanged(value: Any) -> Any:
    """A container this module cannot rebuild keeps its tensors as they are (its type matters more)."""
    if type(value) not in _warned:
        _warned.add(type(value))
        warnings.warn(f"mixq.amp: cannot rebuild a {type(value).__name__} to cast the tensors in it; they keep their "
                      "dtype", stacklevel=3)
    return value

"""Which input axes a captured graph keeps symbolic (``torch.export``'s ``dynamic_shapes``), and their names.

By default every axis a user of the model would vary is symbolic: the batch axis of every input (also when the
example has batch 1), and for token inputs (integer tensors such as ids, attention masks, token types, positions)
the sequence axis, plus that axis of any other input sharing their length (a float mask, ``inputs_embeds``).
Users pass ``dynamic_shapes`` in ``torch.export`` form to choose themselves, or ``False`` for a static file.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.export import Dim

BATCH, SEQUENCE = "batch", "sequence"
Spec = dict[int, Any] | None


def _is_token_tensor(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() >= 2 and not t.is_floating_point() and not t.is_complex()


def default_axes(args: tuple, kwargs: dict) -> tuple[list[dict[int, str]], dict[str, dict[int, str]]]:
    """``{axis: "batch" | "sequence"}`` for each positional and keyword input (empty for non-tensors)."""
    tensors = [*args, *kwargs.values()]
    lengths = {t.shape[1] for t in tensors if _is_token_tensor(t)}

    def axes(t: Any) -> dict[int, str]:
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return {}
        found = {0: BATCH}
        if t.dim() >= 2 and (_is_token_tensor(t) or t.shape[1] in lengths):
            found[1] = SEQUENCE
        return found

    return [axes(a) for a in args], {k: axes(v) for k, v in kwargs.items()}


def _as_spec(axes: dict[int, str]) -> Spec:
    return {axis: Dim.AUTO for axis in axes} or None


def torch_export_spec(model: torch.nn.Module, positional: list[dict[int, str]],
                      keyword: dict[str, dict[int, str]]) -> tuple | dict:
    """The ``dynamic_shapes`` argument for ``torch.export``: ``Dim.AUTO`` lets export infer each axis's range, and
    keep an axis static where the model fixes it (the file's input shapes then say so)."""
    if not keyword:
        return tuple(_as_spec(a) for a in positional)
    params = inspect.signature(model.forward).parameters
    names = list(params)[:len(positional)]
    spec: dict[str, Any] = {n: _as_spec(a) for n, a in zip(names, positional, strict=True)}
    # torch.export keys a keyword that lands in ``**kwargs`` (Hugging Face task models) under that parameter's name
    var_keyword = next((n for n, p in params.items() if p.kind is inspect.Parameter.VAR_KEYWORD), None)
    for key, axes in keyword.items():
        if key in params or var_keyword is None:
            spec[key] = _as_spec(axes)
        else:
            spec.setdefault(var_keyword, {})[key] = _as_spec(axes)
    return spec


def grow_unit_axes(args: tuple, kwargs: dict, positional: list[dict[int, str]],
                   keyword: dict[str, dict[int, str]]) -> tuple[tuple, dict]:
    """Repeat example inputs whose symbolic axes have size 1 up to size 2: ``torch.export`` specialises size-1 axes
    to constants, which would fix a batch-1 example's batch at 1. The graph does not depend on the values."""

    def grow(t: Any, axes: dict[int, str]) -> Any:
        for axis in axes:
            if isinstance(t, torch.Tensor) and t.shape[axis] == 1:
                t = torch.cat([t, t], dim=axis)
        return t

    return (tuple(grow(a, ax) for a, ax in zip(args, positional, strict=True)),
            {k: grow(v, keyword[k]) for k, v in kwargs.items()})


def check_user_spec(spec: Any, args: tuple, kwargs: dict) -> None:
    """Refuse a ``dynamic_shapes`` that does not match the example inputs, with one line saying how."""
    if kwargs and not args:
        if not isinstance(spec, dict):
            raise ValueError(f"dynamic_shapes must be a dict keyed by the keyword inputs {sorted(kwargs)}, "
                             f"got {type(spec).__name__}")
        unknown = sorted(set(spec) - set(kwargs))
        if unknown:
            raise ValueError(f"dynamic_shapes names {unknown}, which are not inputs; the inputs are "
                             f"{sorted(kwargs)}")
        items = [(k, spec.get(k), kwargs[k]) for k in kwargs]
    else:
        if not isinstance(spec, (tuple, list)) or len(spec) != len(args):
            raise ValueError(f"dynamic_shapes must be a tuple with one entry per positional input ({len(args)}), "
                             f"got {spec!r}")
        items = [(f"input {i}", s, a) for i, (s, a) in enumerate(zip(spec, args, strict=True))]
    for name, axes, value in items:
        if axes is None or not isinstance(value, torch.Tensor):
            continue
        keys = axes if isinstance(axes, dict) else dict(enumerate(axes))
        bad = [a for a in keys if not isinstance(a, int) or not -value.dim() <= a < value.dim()]
        if bad:
            raise ValueError(f"dynamic_shapes gives axes {bad} for {name}, which has {value.dim()} dimensions "
                             f"(shape {tuple(value.shape)})")

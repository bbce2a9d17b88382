"""What every exporter takes from its caller in the same form: the example inputs and the I/O dtype's name."""

from __future__ import annotations

from typing import Any

import torch

from mixq.quant.calibration import batch_args, describe

__all__ = ["IO_DTYPE_NAMES", "example_args", "io_dtype_name"]

IO_DTYPE_NAMES = ("float32", "float16", "int8", "uint8")  # each exporter accepts a subset


def example_args(example_inputs: Any, exporter: str, *, keywords: bool = True) -> tuple[tuple, dict]:
    """``example_inputs`` as ``(positional, keyword)`` inputs: a tensor, a tuple/list of tensors or, with
    ``keywords``, a dict of keyword tensors; anything else is refused with a ``TypeError`` naming ``exporter``.

    Example: ``example_args(torch.randn(1, 8), "export_onnx")`` is ``((x,), {})``.
    """
    if isinstance(example_inputs, torch.Tensor):
        return batch_args(example_inputs)
    if isinstance(example_inputs, (tuple, list)) and (keywords or all(isinstance(a, torch.Tensor)
                                                                     for a in example_inputs)):
        return batch_args(example_inputs)
    if keywords and isinstance(example_inputs, dict):
        return batch_args(example_inputs)
    accepted = "a tensor, a tuple of tensors or a dict of keyword tensors" if keywords else \
        "a tensor or a tuple of tensors"
    raise TypeError(f"example_inputs must be {accepted} for {exporter}, got {describe(example_inputs)}")


def io_dtype_name(io_dtype: str | torch.dtype, allowed: tuple[str, ...]) -> str:
    """The name (``"float32"``, ``"float16"``, ``"int8"``, ``"uint8"``) of an exporter's ``io_dtype`` option, which
    takes that name or the matching ``torch.dtype``; one outside ``allowed`` is refused with a ``ValueError``.

    Example: ``io_dtype_name(torch.float16, ("float32", "float16"))`` is ``"float16"``.
    """
    name = str(io_dtype).removeprefix("torch.") if isinstance(io_dtype, torch.dtype) else io_dtype
    if name not in allowed:
        raise ValueError(f"io_dtype must be one of {allowed} (or the matching torch dtype), got {io_dtype!r}")
    return name

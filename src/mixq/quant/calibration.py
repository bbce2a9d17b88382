"""Feeding batches to a model: the accepted batch structures, their validation, and the calibration loop."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

Batch = torch.Tensor | tuple | list | dict


class CalibrationError(ValueError):
    """Calibration data that mixq cannot use (empty, non-finite, or not shaped for the model)."""


def describe(batch: Any) -> str:
    """Short human description of a batch's structure, for error messages."""
    if isinstance(batch, torch.Tensor):
        return f"Tensor{tuple(batch.shape)}:{str(batch.dtype).replace('torch.', '')}"
    if isinstance(batch, (tuple, list)):
        return f"{type(batch).__name__}({', '.join(describe(b) for b in batch)})"
    if isinstance(batch, dict):
        return "dict(" + ", ".join(f"{k}={describe(v)}" for k, v in batch.items()) + ")"
    return type(batch).__name__


def tensors_of(batch: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a batch or a model output, depth first: tensors, tuples/lists and dicts of them."""
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, (tuple, list)):
        for b in batch:
            yield from tensors_of(b)
    elif isinstance(batch, dict):
        for b in batch.values():
            yield from tensors_of(b)


def check_batch(batch: Any, index: int) -> None:
    """Reject batches that are not tensors / tuples / dicts of tensors, or that hold NaN or inf."""
    if not isinstance(batch, (torch.Tensor, tuple, list, dict)):
        raise CalibrationError(
            f"calibration batch {index} is a {type(batch).__name__}; a batch must be a tensor, a tuple/list of "
            "positional tensors, or a dict of keyword tensors"
        )
    if isinstance(batch, (tuple, list, dict)):
        values = batch.values() if isinstance(batch, dict) else batch
        odd = [type(v).__name__ for v in values if not isinstance(v, (torch.Tensor, tuple, list, dict, type(None)))]
        if odd:
            raise CalibrationError(f"calibration batch {index} ({describe(batch)}) holds a {odd[0]}; every input "
                                   "of a batch must be a tensor")
    sized = [t for t in tensors_of(batch) if t.dim() > 0]
    if sized and all(t.shape[0] == 0 for t in sized):
        raise CalibrationError(f"calibration batch {index} ({describe(batch)}) is empty (0 samples); drop empty "
                               "batches")
    for t in tensors_of(batch):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CalibrationError(
                f"calibration batch {index} ({describe(batch)}) contains NaN or inf; clean or drop it first"
            )


def check_iterable(batches: Any) -> None:
    """Reject calibration data that is not an iterable of batches (a lone tensor or dict is one batch)."""
    if isinstance(batches, (torch.Tensor, dict)) or not isinstance(batches, Iterable):
        raise TypeError(
            f"calib_data must be an iterable of batches (e.g. a list of tensors or a DataLoader), got "
            f"{type(batches).__name__}; wrap a single batch in a list: calib_data=[x]"
        )


def batch_args(batch: Batch) -> tuple[tuple, dict]:
    """A batch as ``(positional, keyword)`` inputs: a tensor, a tuple/list of them, or a dict of keyword tensors."""
    if isinstance(batch, torch.Tensor):
        return (batch,), {}
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    return (), dict(batch)


def call_model(model: nn.Module, batch: Batch) -> Any:
    """Call ``model`` with a batch: ``model(t)``, ``model(*batch)`` or ``model(**batch)``."""
    args, kwargs = batch_args(batch)
    return model(*args, **kwargs)


def run_batches(model: nn.Module, batches: Iterable[Batch], *, desc: str = "calibrating",
                progress: bool = True, max_batches: int | None = None) -> int:
    """Run every batch through ``model`` without gradients, with a progress bar; returns the number of batches."""
    check_iterable(batches)
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ValueError(f"max_calib_batches must be a positive int or None, got {max_batches!r}")
    total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    if max_batches is not None:
        batches = itertools.islice(batches, max_batches)
        total = min(total, max_batches) if total is not None else max_batches
    count = 0
    with torch.no_grad():
        for i, batch in enumerate(tqdm(batches, desc=desc, total=total, disable=not progress, leave=False)):
            call_checked(model, batch, i)
            count += 1
    if count == 0:
        raise CalibrationError("calib_data yielded no batches; pass at least one representative batch")
    return count


def call_checked(model: nn.Module, batch: Batch, index: int = 0) -> Any:
    """``call_model`` after ``check_batch``, turning the model's complaints into a ``CalibrationError``."""
    check_batch(batch, index)
    try:
        return call_model(model, batch)
    except CalibrationError:
        raise
    except ValueError as err:
        if "non-finite" in str(err):
            raise CalibrationError(f"{err} (batch {index})") from err
        raise _shape_error(batch, index, err) from err
    except (TypeError, RuntimeError, IndexError) as err:
        raise _shape_error(batch, index, err) from err


def _shape_error(batch: Any, index: int, err: Exception) -> CalibrationError:
    return CalibrationError(
        f"calibration batch {index} ({describe(batch)}) could not be passed to the model: {err}. "
        "Batches must be what the model's forward takes: a tensor, a tuple of positional tensors or a dict of "
        "keyword tensors"
    )

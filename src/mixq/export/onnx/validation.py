"""Checking an export before it replaces anything: the model must run on the example in PyTorch, and the written
file must load and run in ONNX Runtime on that same example.

``export_onnx`` calls :func:`check_model_runs` before exporting and :func:`check_runtime_runs` on the temporary
file before renaming it over the target, so a file ONNX Runtime rejects never reaches the target path.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from mixq.messages import first_line
from mixq.quant.calibration import describe

__all__ = ["ExportCheckError", "check_model_runs", "check_runtime_runs"]

_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


class ExportCheckError(ValueError):
    """The model or the exported file failed its check; the message says which and why."""


def check_model_runs(model: nn.Module, args: tuple, kwargs: dict) -> Any:
    """Run ``model`` once on the example and return its output; a failure means the example does not fit it."""
    try:
        with torch.no_grad():
            return model(*args, **kwargs)
    except Exception as err:
        raise ExportCheckError(
            f"the model does not run on them in PyTorch ({type(err).__name__}: {first_line(err)}); pass example "
            f"inputs shaped like the model's input{_positional_hint(model, args)}"
        ) from err


def _positional_hint(model: nn.Module, args: tuple) -> str:
    """Where positional inputs landed in ``model.forward``'s parameters, when more than one was given (a causal
    LM's second parameter is often ``past_key_values``, not ``attention_mask``)."""
    if len(args) < 2:
        return ""
    try:
        names = [n for n in inspect.signature(model.forward).parameters][:len(args)]
    except (TypeError, ValueError):
        return ""
    return f" (positional inputs are read as {', '.join(names)}; pass a dict of keyword tensors to name them)"


def _flat(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    values = list(args) + list(kwargs.values())
    return [v for v in values if isinstance(v, torch.Tensor)]


def check_runtime_runs(path: str | os.PathLike, args: tuple, kwargs: dict) -> None:
    """Load ``path`` in ONNX Runtime and run it on the example (cast to the graph's input types)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ExportCheckError(f"ONNX Runtime rejects the exported file ({first_line(err)})") from err
    inputs = session.get_inputs()
    if kwargs and all(isinstance(kwargs.get(i.name), torch.Tensor) for i in inputs):
        tensors = [kwargs[i.name] for i in inputs]  # keyword inputs keep their names in the graph
    else:
        tensors = _flat(args, kwargs)
    if len(inputs) != len(tensors) or any(i.type not in _NUMPY for i in inputs):
        return  # inputs folded away or of exotic types: loading is what can be checked
    feeds = {i.name: t.detach().cpu().numpy().astype(_NUMPY[i.type]) for i, t in zip(inputs, tensors, strict=True)}
    try:
        session.run(None, feeds)
    except Exception as err:
        raise ExportCheckError(f"ONNX Runtime loads the exported file but fails on the example inputs "
                               f"{describe(kwargs or args)} ({first_line(err)})") from err

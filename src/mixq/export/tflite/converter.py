"""The litert-torch side of the export: one call that turns a lowered PyTorch module into ``.tflite`` bytes.

litert-torch decides how quantize/dequantize pairs become int8 kernels through two converter settings it does not
expose (``qdq_conversion_mode``, ``strict_qdq_mode``; it sets only the first, from a PT2E quantizer), so they are set
here around one conversion; the ``mixq[litert]`` extra pins the litert-torch release this is written against.
``strict_qdq_mode`` keeps the graph's own float boundary (QUANTIZE first, DEQUANTIZE last: float32 I/O); without it
the converter folds the boundary quantize/dequantize into int8 graph inputs and outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import torch

INSTALL_HINT = "pip install 'mixq[litert]'"
_PACKAGES = ("litert_torch", "ai_edge_litert", "ai_edge_quantizer")


class LiteRTMissingError(ImportError):
    """litert-torch / ai-edge-litert are not installed (the optional ``mixq[litert]`` extra)."""


def litert_available() -> bool:
    """Whether the ``mixq[litert]`` extra is installed (checked without importing it: the import is slow)."""
    return all(importlib.util.find_spec(name) is not None for name in _PACKAGES)


def require_litert() -> None:
    """Raise ``LiteRTMissingError`` with the install command when the LiteRT extra is missing."""
    for name in _PACKAGES:
        if importlib.util.find_spec(name) is None:
            raise LiteRTMissingError(f"writing or running .tflite files needs LiteRT ({name} is not installed): "
                                     f"{INSTALL_HINT}")


@contextlib.contextmanager
def captured_output(sink: list[str]) -> Iterator[None]:
    """Capture what the converter writes to the process's stdout/stderr (its C++ passes log there directly);
    the text is appended to ``sink`` when the block exits, for error messages."""
    with tempfile.TemporaryFile(mode="w+b") as log:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            log.seek(0)
            sink.append(log.read().decode("utf-8", "replace"))


@contextlib.contextmanager
def _converter_settings(qdq_mode: str, strict: bool) -> Iterator[None]:
    from litert_torch._convert import litert_converter

    api = litert_converter.converter_api_ext
    original = api.ConvertToTFLConfig

    def configured() -> Any:
        config = original()
        config.qdq_conversion_mode = qdq_mode
        config.strict_qdq_mode = strict
        return config

    api.ConvertToTFLConfig = configured
    try:
        yield
    finally:
        api.ConvertToTFLConfig = original


@contextlib.contextmanager
def _constants_by_value() -> Iterator[None]:
    """Key litert-torch's cache of lowered constants by their values as well as their address.

    litert-torch caches each constant it lowers under its storage address; a constant freed during the conversion
    leaves its address to the next one, which then gets the first one's values: a BERT layer's query, key and
    value weights came out as one weight (litert-torch 0.10). The file's self-check catches such a file; with the
    values in the key it is right.
    """
    from litert_torch.backend import inline_consts

    fingerprint = inline_consts._ConstantFingerprint
    original = fingerprint.from_tensor

    def keyed(tensor: torch.Tensor) -> Any:
        data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
        return original(tensor), str(tensor.dtype), hashlib.sha1(data.tobytes()).hexdigest()

    fingerprint.from_tensor = staticmethod(keyed)
    try:
        yield
    finally:
        fingerprint.from_tensor = original


def _batched(a: Any, batch: Any) -> Any:
    return {0: batch} if isinstance(a, torch.Tensor) and a.dim() > 0 else None


def _dynamic_batch(args: tuple, kwargs: dict) -> Any:
    """Dynamic shapes for ``forward(*args)`` or ``forward(**kwargs)``: the first dimension of every input is one
    symbolic batch."""
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    if kwargs:
        return {k: _batched(a, batch) for k, a in kwargs.items()}
    return (tuple(_batched(a, batch) for a in args),)


def _doubled(a: Any) -> Any:
    return torch.cat([a, a]) if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == 1 else a


def _fenced(module: torch.nn.Module, args: tuple, kwargs: dict, shapes: Any) -> torch.nn.Module:
    """``module`` captured with slice fences before its quantizes (``fences``), or ``module`` itself when none is
    needed (the common case: converted as it is)."""
    from mixq.export.tflite.fences import fence_sliced_quantizes

    with torch.no_grad():
        gm = torch.export.export(module.eval(), args, kwargs or None, dynamic_shapes=shapes, strict=False).module()
    return gm if fence_sliced_quantizes(gm) else module


def convert_to_tflite(module: torch.nn.Module, args: tuple, kwargs: dict, *, quantized: bool,
                      float_io: bool, dynamic_batch: bool) -> bytes:
    """``.tflite`` bytes of ``module`` traced with ``module(*args, **kwargs)``: inputs ``args_0``, ... and the
    keys of ``kwargs`` in the file's signature.

    ``quantized`` turns quantize/dequantize pairs into int8 kernels; ``float_io`` keeps float32 graph inputs and
    outputs around them. With ``dynamic_batch`` the first dimension of every input is resizable at run time.
    """
    from mixq.quant.graft import no_leafspec_warning
    from mixq.quiet import import_quietly

    litert_torch = import_quietly("litert_torch")
    from litert_torch._config import config

    config.show_progress = False
    shapes = _dynamic_batch(args, kwargs) if dynamic_batch else None
    if dynamic_batch:  # torch.export specialises a size-1 dimension to the constant 1: trace with a batch of 2
        args = tuple(_doubled(a) for a in args)
        kwargs = {k: _doubled(a) for k, a in kwargs.items()}
    if quantized:
        module = _fenced(module, args, kwargs, shapes)
    settings = _converter_settings("STATIC", strict=float_io) if quantized else contextlib.nullcontext()
    with settings, _constants_by_value(), no_leafspec_warning():  # litert-torch copies exported programs
        converted = litert_torch.convert(module, args, kwargs or None, dynamic_shapes=shapes)
    return converted.model_content()

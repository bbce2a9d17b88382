"""Importing optional third-party packages without their import-time chatter.

transformers imports torchao when it is installed (the LiteRT extra brings it), which logs "Failed to load
.../torchao/_C_mxfp8...so", "Detected no triton" and torch's pytree deprecation warnings on every run, none of them
about the user's model. mixq imports such packages through :func:`import_quietly`, so that noise is dropped while
mixq's own warnings (and the package's errors) still show.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import warnings
from collections.abc import Iterator
from types import ModuleType

# loggers that speak while optional packages are imported (their errors still show)
NOISY_LOGGERS = ("torchao", "torch.utils._pytree", "transformers", "litert_torch", "ai_edge_quantizer", "absl",
                 "tensorflow")


# loggers that speak when torch.export fails on a model mixq then quantizes another way
CAPTURE_LOGGERS = ("torch.fx.experimental.symbolic_shapes", "torch._export", "torch.export", "torch._dynamo")


@contextlib.contextmanager
def quiet_imports(names: tuple[str, ...] = NOISY_LOGGERS) -> Iterator[None]:
    """Warnings and below from third-party loggers (``names``), and Python warnings, are dropped inside the
    block."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def import_quietly(*names: str) -> ModuleType:
    """Import ``names`` in order inside :func:`quiet_imports`; returns the first module.

    Example: ``transformers = import_quietly("transformers", "transformers.modeling_utils")``.
    """
    with quiet_imports():
        modules = [importlib.import_module(name) for name in names]
    return modules[0]


@contextlib.contextmanager
def quiet_capture() -> Iterator[None]:
    """Around a ``torch.export`` call whose failure mixq reports in one line (and then quantizes another way):
    torch's warnings and its own print of the partial graph (to stderr, hundreds of lines) are dropped."""
    with quiet_imports(CAPTURE_LOGGERS), contextlib.redirect_stderr(io.StringIO()):
        yield

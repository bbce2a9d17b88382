"""Exceptions raised by :mod:`mixq.amp`.

All of them derive from :class:`AmpError`, so ``except mixq.amp.AmpError`` catches every mixed-precision
failure, while each also derives from the built-in type a caller would expect (``ValueError``, ...).
"""

from __future__ import annotations

__all__ = [
    "AmpError",
    "LossScaleCollapseError",
    "NonFiniteGradientsError",
    "PrecisionUnsupportedError",
    "StepOrderError",
]


class AmpError(Exception):
    """Base class of every error raised by :mod:`mixq.amp`."""


class PrecisionUnsupportedError(AmpError, ValueError):
    """The requested precision cannot run on the target device (e.g. fp16 where autocast has no fp16)."""


class StepOrderError(AmpError, RuntimeError):
    """``backward()``/``step()``/``zero_grad()`` were called in an order that cannot be right."""


class LossScaleCollapseError(AmpError, FloatingPointError):
    """The dynamic loss scale fell below its floor: gradients stay non-finite however small the scale.

    Attributes:
        scale: the loss scale after the last backoff.
        first_bad_layer: name of the first module (in ``named_modules`` order) with a non-finite gradient, or
            ``None`` when no gradient is non-finite any more.
    """

    def __init__(self, message: str, *, scale: float, first_bad_layer: str | None) -> None:
        super().__init__(message)
        self.scale = scale
        self.first_bad_layer = first_bad_layer


class NonFiniteGradientsError(AmpError, FloatingPointError):
    """Too many optimizer steps in a row were skipped because their gradients were not finite.

    Attributes:
        skipped: how many consecutive steps were skipped.
        first_bad_layer: name of the first module (in ``named_modules`` order) with a non-finite gradient in the
            last step, or ``None`` when the gradients were finite but their norm overflowed.
    """

    def __init__(self, message: str, *, skipped: int, first_bad_layer: str | None) -> None:
        super().__init__(message)
        self.skipped = skipped
        self.first_bad_layer = first_bad_layer

"""The face a replacement layer shows to model code that reads the layer it replaced.

Model code reads attributes of its own layers, not only their outputs: Hugging Face's ViT casts images to
``projection.weight.dtype``, T5 compares against ``wo.weight.dtype``, MobileNetV2's TF padding and Whisper read
``conv.stride`` / ``kernel_size`` / ``dilation``. Every module mixq swaps in for a float layer therefore shows:

* the float class's hyper-parameters (its ``__constants__``: ``stride``, ``padding``, ``kernel_size``,
  ``in_features``, ``num_embeddings``, ...), with the values of the layer it replaced;
* ``weight``: the float weight the layer computes with, as its caller sees it: float32 (the dtype its input must
  have, whatever the storage: int8, 4-bit, float16), the float layer's shape, on the same device. It is dequantized
  from the stored weight on each access (never cached: no second copy of the model), with the exporters' own
  dequantize ops, so code that only reads ``weight.dtype`` leaves nothing in a captured graph and code that
  computes with it reads the integer (or float16) weight through DequantizeLinear (Cast). It is a view for
  reading: assigning it raises, and writing into the returned tensor changes nothing.

A static convolution's ``bias`` stays what its kernel adds (int32, on the input times weight scale); float16 layers'
``bias`` is float16.

``FloatFacade`` is the base of the quantized modules (they hold no float layer); ``Delegating`` is the mixin of the
wrappers that hold the float layer as ``self.layer`` (calibration's ``ObservedLayer``, the QAT layers), which
answer those names from it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def public_attributes(layer: nn.Module) -> dict[str, Any]:
    """The hyper-parameters of ``layer`` that model code may read: its class's ``__constants__`` (see ``nn.Conv2d``,
    ``nn.Linear``, ``nn.Embedding``) that it holds."""
    names = getattr(type(layer), "__constants__", ())
    return {name: getattr(layer, name) for name in names if hasattr(layer, name)}


_FORWARDED = frozenset(["weight", "bias", *(name for cls in (nn.Conv1d, nn.Conv2d, nn.Linear, nn.Embedding)
                                                 for name in cls.__constants__)])


class FloatFacade(nn.Module):
    """Base of a quantized module replacing a float layer: ``expose(layer)`` in ``__init__`` copies the layer's
    hyper-parameters, ``float_weight()`` (each subclass) dequantizes the stored weight, which ``weight`` returns.

    ``renamed`` maps a state-dict key that older mixq versions saved (``weight``, when it held the int8 tensor) to
    the buffer that holds it now, so saved models still load.
    """

    renamed: dict[str, str] = {}

    def expose(self, layer: nn.Module) -> None:
        """Show ``layer``'s hyper-parameters (``stride``, ``in_features``, ...) as this module's own."""
        for name, value in public_attributes(layer).items():
            setattr(self, name, value)

    def float_weight(self) -> torch.Tensor:
        """The weight as the float layer held it (float32, its shape), computed from the stored weight."""
        raise AttributeError(f"{type(self).__name__} has no weight")  # a module with no weight (an integer add)

    @property
    def weight(self) -> torch.Tensor:
        """The float32 weight this layer computes with, dequantized on access (see the module docstring)."""
        return self.float_weight()

    @weight.setter
    def weight(self, value: object) -> None:
        raise AttributeError(f"{type(self).__name__}.weight is dequantized from the stored weight on each access and "
                             "cannot be assigned; change the float model's weight and quantize it again")

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        for old, new in self.renamed.items():
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Delegating:
    """Mixin for a wrapper holding the float layer as ``self.layer``: ``weight``, ``bias`` and the hyper-parameters
    of Conv/Linear/Embedding layers that the wrapper does not define itself are read from that layer."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # type: ignore[misc]
        except AttributeError:
            layer = self.__dict__.get("_modules", {}).get("layer") if name in _FORWARDED else None
            if layer is None or not hasattr(layer, name):
                raise
            return getattr(layer, name)

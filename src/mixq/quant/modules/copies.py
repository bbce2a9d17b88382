"""Copies of a float layer that share its tensors but can take new ones: what bias correction, AdaRound and pad
unfolding build their variants of a layer from.

``copy.copy`` cannot make them: it pickles the module, which a parametrized layer (``weight_norm``, as in wav2vec2's
positional convolution) refuses, and assigning a new ``weight`` to a parametrized layer would go through its
parametrization's inverse. ``plain_copy`` gives a layer of the original class with every parametrized tensor
materialized as it is now, which computes what the layer computes.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize


def plain_copy(layer: nn.Module) -> nn.Module:
    """A shallow copy of ``layer`` with its own parameter dict (new parameters set on it do not reach ``layer``),
    of the layer's own class without parametrizations: a parametrized tensor becomes a frozen parameter holding
    its current value."""
    cls = type(layer)
    original = cls.__bases__[0] if parametrize.is_parametrized(layer) else cls
    copy = original.__new__(original)
    copy.__dict__.update(layer.__dict__)
    copy._parameters = dict(layer._parameters)
    if parametrize.is_parametrized(layer):
        copy._modules = {k: v for k, v in layer._modules.items() if k != "parametrizations"}
        for name in layer.parametrizations:
            copy._parameters[name] = nn.Parameter(getattr(layer, name).detach(), requires_grad=False)
    return copy

"""Where a linear layer keeps its weight: weight-only methods work on a plain ``[out_features, in_features]``
matrix, and this adapter reads and writes it for each layer kind (``nn.Linear``: ``weight``; Hugging Face's GPT-2
``Conv1D``: ``weight.T``)."""

from __future__ import annotations

import torch
from torch import nn


def is_conv1d(layer: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2 family): a linear layer storing its weight as ``[in, out]``."""
    return type(layer).__name__ == "Conv1D" and hasattr(layer, "nf") and getattr(layer, "weight", None) is not None


def is_linear_like(layer: nn.Module) -> bool:
    """True for layers whose weight is one matrix applied to the last input dimension."""
    return isinstance(layer, nn.Linear) or is_conv1d(layer)


def in_out_features(layer: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a linear-like layer."""
    if is_conv1d(layer):
        return int(layer.weight.shape[0]), int(layer.weight.shape[1])
    return layer.in_features, layer.out_features


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as ``[out_features, in_features]`` (a view where possible)."""
    if not is_linear_like(layer):
        raise TypeError(f"{type(layer).__name__} is not a linear layer (nn.Linear or transformers' Conv1D)")
    return layer.weight.T if is_conv1d(layer) else layer.weight


@torch.no_grad()
def set_weight_matrix(layer: nn.Module, matrix: torch.Tensor) -> None:
    """Overwrite the layer's weight with ``matrix`` (``[out_features, in_features]``), keeping its dtype."""
    target = weight_matrix(layer)
    target.copy_(matrix.to(target.dtype))

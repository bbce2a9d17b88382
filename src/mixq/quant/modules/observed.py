"""The calibration-time wrapper: runs the float layer unchanged while observers record its input and output."""

from __future__ import annotations

import torch
from torch import nn

from mixq.quant.observers import Observer


class ObservedLayer(nn.Module):
    """Float layer + input/output observers (+ the ReLU fused into it, applied before the output observer)."""

    def __init__(self, layer: nn.Module, input_observer: Observer, output_observer: Observer,
                 relu: bool = False) -> None:
        super().__init__()
        self.layer = layer
        self.input_observer = input_observer
        self.output_observer = output_observer
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.input_observer(x)
        y = self.layer(x)
        if self.relu:
            y = torch.relu(y)
        return self.output_observer(y)

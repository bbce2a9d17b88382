"""A small conv + MLP net and its batches, for the stage-by-stage tests (stages, conversion)."""

from __future__ import annotations

import torch
from torch import nn

LAYERS = ["0", "4", "6"]  # conv (BatchNorm "1" and ReLU "2" fold into it), fc1 (+ ReLU "5"), fc2


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def batches(n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 1, 6, 6, generator=g) for _ in range(n)]

"""Locally built models for autoquantize: one with a layer int8 ruins (activation outliers), one that quantizes
well, and a metric that measures how closely a model follows its fp32 original."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn


class OutlierMLP(nn.Module):
    """``fc2`` reads activations one channel of which is ~1000x the others (a fixed gain after ``fc1``): a
    per-tensor uint8 range for that input leaves the other channels a handful of levels. ``fc2``'s weights for the
    outlier channel are scaled down, so the float model is well behaved."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 8)
        gain = torch.ones(32)
        gain[0] = 1000.0
        self.register_buffer("gain", gain)
        with torch.no_grad():
            self.fc1.bias[0] = 2.0  # keep the outlier channel active after the ReLU
            self.fc2.weight[:, 0] /= 1000.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x)) * self.gain
        return self.fc3(torch.relu(self.fc2(h)))


def fidelity(reference: nn.Module, x: torch.Tensor) -> Callable[[nn.Module], float]:
    """``eval_fn``: 1 - relative L2 error of a model's outputs against ``reference``'s on ``x`` (higher is better)."""
    with torch.no_grad():
        expected = reference(x)

    def eval_fn(model: nn.Module) -> float:
        with torch.no_grad():
            return 1.0 - float((model(x) - expected).norm() / expected.norm())

    return eval_fn


@pytest.fixture(scope="module")
def outlier_case() -> tuple[nn.Module, list[torch.Tensor], Callable[[nn.Module], float]]:
    model = OutlierMLP().eval()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(64, 16, generator=g) for _ in range(4)]
    return model, batches, fidelity(model, torch.randn(256, 16, generator=g))

"""Plain helpers for the mixed-precision tests (importable as ``amp_helpers``: tests/amp is on pytest's path)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

import mixq.amp as amp


@dataclasses.dataclass(frozen=True)
class Digits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def make_mlp(seed: int = 0, hidden: int = 128, norm: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, hidden),
        nn.LayerNorm(hidden) if norm else nn.Identity(),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def train(
    data: Digits,
    precision: str,
    steps: int = 600,
    batch: int = 64,
    seed: int = 0,
    lr: float = 1e-3,
    **kw: Any,
) -> tuple[nn.Module, amp.MixedPrecision, float]:
    """Train ``make_mlp(seed)`` with MixedPrecision and return (model, mp, test accuracy)."""
    model = make_mlp(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    mp = amp.MixedPrecision(model, opt, precision=precision, **kw)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(data.x_train), (batch,), generator=gen)
        with mp.autocast():
            loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        mp.backward(loss)
        mp.step()
        mp.zero_grad()
    return model, mp, accuracy(model, data, mp)


@torch.no_grad()
def accuracy(model: nn.Module, data: Digits, mp: amp.MixedPrecision | None = None) -> float:
    if mp is None:
        logits = model(data.x_test)
    else:
        with mp.autocast():
            logits = model(data.x_test)
    return (logits.argmax(1) == data.y_test).float().mean().item()

"""Models and training for ``bench_tflite.py``: the demo CNN, or a deeper residual CNN of the same kind for digits
upsampled to 32-64 px, where a batch-1 invoke is compute-bound rather than call-overhead-bound."""

from __future__ import annotations

import torch
from torch import nn

from mixq.demo import DigitsCNN, train


class Block(nn.Module):
    """conv3x3-bn-relu, conv3x3-bn, residual add, relu (each ReLU its own module, so mixq fuses it)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                   nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + x)


class DigitsResNet(nn.Module):
    """The demo CNN deepened: Conv+BN+ReLU stem, then ``stages`` x (2x2 max pool, ``blocks`` residual blocks),
    global average pooling and a Linear head. Each pool doubles the receptive field, so large inputs train."""

    def __init__(self, channels: int, stages: int, blocks: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        layers: list[nn.Module] = []
        for _ in range(stages):
            layers += [nn.MaxPool2d(2)] + [Block(channels) for _ in range(blocks)]
        self.body = nn.Sequential(*layers)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.gap(self.body(self.stem(x))), 1))


def build_model(channels: int, stages: int, blocks: int) -> nn.Module:
    """The demo's DigitsCNN for one stage of one block (the same layers), else a ``DigitsResNet``."""
    return DigitsCNN(channels) if (stages, blocks) == (1, 1) else DigitsResNet(channels, stages, blocks)


def describe(channels: int, stages: int, blocks: int) -> str:
    """The model's name in reports."""
    if (stages, blocks) == (1, 1):
        return f"demo DigitsCNN({channels})"
    if stages == 0:
        return f"DigitsResNet({channels} channels, stem conv only)"
    return f"DigitsResNet({channels} channels, {stages} stages x {blocks} residual blocks)"


def upsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Digits resized (bilinear) to ``size`` x ``size``; 8 returns the demo's own 8x8 data."""
    return x if size == x.shape[-1] else nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> nn.Module:
    """The demo's recipe on 8x8 inputs; on upsampled inputs Adam with a one-cycle schedule (peak 3e-3) over
    mini-batches of 64 reshuffled every epoch: with the demo's constant 1e-2 (or 3e-3) and one fixed order, test
    accuracy at 32 px swings between epochs (0.1-0.9) and was 0.35 after 4 epochs."""
    if x.shape[-1] == 8:
        return train(model, x, y, epochs=epochs, seed=seed)
    torch.manual_seed(seed)
    steps = (len(x) + 63) // 64
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * steps)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + epoch))
        for i in range(0, len(x), 64):
            idx = order[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            schedule.step()
    return model.eval()

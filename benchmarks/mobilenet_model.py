"""A MobileNetV2-style CNN with random weights (torchvision is not a dependency): a 3-channel stem conv, inverted
residual blocks (1x1 expand, 3x3 depthwise, 1x1 project, residual add where shapes allow) and a 1x1 head; the conv
kinds whose int8 kernels run at very different speeds (stem, depthwise, pointwise)."""

from __future__ import annotations

import torch
from ptq_models import settle_batchnorm
from torch import nn

# (expansion, output channels, repeats, first stride) per stage, as MobileNetV2 (width 1.0)
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers = [conv_bn(cin, hidden, 1)] if expansion != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, 1, relu=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (ReLU instead of ReLU6, which folds into a quantized conv's output range alike)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 32, 3, 2)]
        cin = 32
        for expansion, cout, repeats, stride in STAGES:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expansion))
                cin = cout
        layers.append(conv_bn(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def make_mobilenet(image: int = 224, seed: int = 0) -> nn.Module:
    """MobileNetV2 with random weights and BatchNorm statistics set from random images (so folding is not a no-op)."""
    torch.manual_seed(seed)
    return settle_batchnorm(MobileNetV2(), image, seed, rounds=3, batch=4)

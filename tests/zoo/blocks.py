"""Hand-written blocks in the styles found in models in the wild (timm, pip-packaged mobile CNNs, LoRA wrappers).

Each block sits in a tiny classifier (``Net``): a stem, the block, global average pooling and a Linear head, so
every case ends in logits over 10 classes. Inputs are ``(batch, 3, 16, 16)`` images.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class SamePadConv2d(nn.Conv2d):
    """TF "same" padding as pip-packaged mobile CNNs write it: a Conv2d subclass that pads through a ZeroPad2d
    member computed from the input size in ``forward``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, padding=0, **kwargs)
        self.pad = nn.ZeroPad2d(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride),
                              strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        self.pad.padding = tuple(pads)
        return super().forward(self.pad(x))


class FunctionalConv(nn.Module):
    """A convolution written as ``F.conv2d`` on a Parameter (no nn.Conv2d anywhere)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) / math.sqrt(9 * cin))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=1)


class WSConv2d(nn.Conv2d):
    """Weight-standardised convolution (BiT / NFNet style): the weight is normalised per output channel in
    ``forward``, so a plain Conv2d with the stored weight computes something else."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class PermutingLinear(nn.Linear):
    """A Linear subclass whose ``forward`` permutes its input first (channels-first features)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, -1)).transpose(1, -1)


class LoRALinear(nn.Module):
    """A LoRA wrapper as PEFT writes it: the frozen base layer plus a low-rank update ``B(A(x)) * scale``."""

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 8.0) -> None:
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        nn.init.normal_(self.lora_B.weight, std=0.1)  # trained adapters are not zero
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B(self.lora_A(x)) * self.scaling


class SqueezeExcite(nn.Module):
    """Squeeze-and-excite: pooled channels, a bottleneck of two 1x1 convs and a sigmoid gate multiplying x."""

    def __init__(self, channels: int, gate: Callable = torch.sigmoid) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // 4, 1)
        self.expand = nn.Conv2d(channels // 4, channels, 1)
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.expand(F.relu(self.reduce(s))))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleBlock(nn.Module):
    """ShuffleNet unit: grouped 1x1 conv, channel shuffle, depthwise 3x3, grouped 1x1, residual."""

    def __init__(self, channels: int, groups: int = 4) -> None:
        super().__init__()
        self.groups = groups
        self.g1 = nn.Sequential(nn.Conv2d(channels, channels, 1, groups=groups, bias=False), nn.BatchNorm2d(channels),
                                nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
                                nn.BatchNorm2d(channels))
        self.g2 = nn.Sequential(nn.Conv2d(channels, channels, 1, groups=groups, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.g2(self.dw(channel_shuffle(self.g1(x), self.groups)))
        return F.relu(x + y)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an NCHW tensor via permutes (ConvNeXt / timm style)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class InvertedResidual(nn.Module):
    """MobileNet inverted residual: expand 1x1, depthwise 3x3, project 1x1, with ``act`` after the first two and
    an optional squeeze-excite."""

    def __init__(self, channels: int, act: Callable[[], nn.Module], se: bool = False) -> None:
        super().__init__()
        hidden = channels * 2
        self.expand = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act())
        self.dw = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
                                nn.BatchNorm2d(hidden), act())
        self.se = SqueezeExcite(hidden) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.se(self.dw(self.expand(x))))


class Net(nn.Module):
    """Stem conv + BN + ReLU, ``block``, global average pooling and a Linear head (10 classes)."""

    def __init__(self, block: nn.Module, channels: int = 16, stem: nn.Module | None = None) -> None:
        super().__init__()
        self.stem = stem or nn.Sequential(nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                          nn.ReLU())
        self.block = block
        self.head = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.block(self.stem(x)), 1), 1))


class _ChannelsLast(nn.Module):
    def __init__(self, linear: nn.Module) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.linear(x))


def _bn_act(channels: int, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), act)


BLOCKS: dict[str, Callable[[], nn.Module]] = {
    "same-pad-conv": lambda: Net(nn.Sequential(SamePadConv2d(16, 16, 3, stride=2), _bn_act(16, nn.ReLU6())),
                                 stem=nn.Sequential(SamePadConv2d(3, 16, 3), _bn_act(16, nn.ReLU6()))),
    "functional-conv": lambda: Net(nn.Sequential(FunctionalConv(16, 16), nn.ReLU())),
    "ws-conv": lambda: Net(nn.Sequential(WSConv2d(16, 16, 3, padding=1), nn.ReLU())),
    "permuting-linear": lambda: Net(_ChannelsLast(PermutingLinear(16, 16))),
    "lora-linear": lambda: Net(nn.Sequential(nn.Flatten(-2), _LoRAOnChannels(16), nn.Unflatten(-1, (16, 16)))),
    "squeeze-excite": lambda: Net(nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), SqueezeExcite(16))),
    "channel-shuffle": lambda: Net(ShuffleBlock(16)),
    "layernorm2d": lambda: Net(nn.Sequential(nn.Conv2d(16, 16, 7, padding=3, groups=16), LayerNorm2d(16),
                                             nn.Conv2d(16, 32, 1), nn.GELU(), nn.Conv2d(32, 16, 1))),
    "grouped-conv": lambda: Net(nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, groups=4), nn.BatchNorm2d(32),
                                              nn.ReLU(), nn.Conv2d(32, 16, 3, padding=1, groups=8))),
    "relu6-mbconv": lambda: Net(InvertedResidual(16, nn.ReLU6)),
    "hardswish-mbconv": lambda: Net(InvertedResidual(16, nn.Hardswish, se=True)),
    "silu-mbconv": lambda: Net(InvertedResidual(16, nn.SiLU, se=True)),
    "hardtanh-conv": lambda: Net(nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.Hardtanh(0.0, 2.0),
                                               nn.Conv2d(16, 16, 3, padding=1), nn.Hardtanh())),
}


class _LoRAOnChannels(nn.Module):
    """Applies a LoRA-wrapped Linear across the channels of a (batch, channels, pixels) tensor."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = LoRALinear(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.transpose(1, 2)).transpose(1, 2)

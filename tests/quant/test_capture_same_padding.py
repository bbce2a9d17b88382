"""Conv subclasses that pad in their own forward (TF-"same" padding, as EfficientNet ports write it) are quantized as
what they compute (mixq.quant.capture): the padding stays in the graph, the convolution becomes an ordinary quantized
layer, BatchNorm folds into it, and the model keeps its class."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixq


class SamePadConv(nn.Conv2d):
    """TensorFlow "same" padding for a fixed image size: a ZeroPad2d member, then F.conv2d on its own weights."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False,
                 image: int = 16) -> None:
        super().__init__(cin, cout, k, stride, groups=groups, bias=bias)
        out = math.ceil(image / stride)
        pad = max((out - 1) * stride + k - image, 0)
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class StandardisedConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # a computed weight: not a plain conv call
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, 1)


class MBBlock(nn.Module):
    """Expand 1x1, depthwise 3x3 (stride 2: asymmetric padding), squeeze-excite, project 1x1, ReLU6."""

    def __init__(self, c: int = 8, image: int = 16) -> None:
        super().__init__()
        self.expand = SamePadConv(c, 4 * c, 1, image=image)
        self.bn0 = nn.BatchNorm2d(4 * c)
        self.depthwise = SamePadConv(4 * c, 4 * c, 3, stride=2, groups=4 * c, image=image)
        self.bn1 = nn.BatchNorm2d(4 * c)
        self.se_reduce = SamePadConv(4 * c, c, 1, bias=True, image=1)
        self.se_expand = SamePadConv(c, 4 * c, 1, bias=True, image=1)
        self.project = SamePadConv(4 * c, c, 1, image=image // 2)
        self.bn2 = nn.BatchNorm2d(c)
        self.act = nn.ReLU6()
        self.inner = SamePadConv(c, c, 3, image=image // 2)  # stride 1, odd kernel: symmetric padding, residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn0(self.expand(x)))
        x = self.act(self.bn1(self.depthwise(x)))
        s = self.se_expand(self.act(self.se_reduce(F.adaptive_avg_pool2d(x, 1))))
        x = self.bn2(self.project(torch.sigmoid(s) * x))
        return x + self.inner(x)


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(SamePadConv(3, 8, 3, stride=2, image=32), nn.BatchNorm2d(8), nn.ReLU6(), MBBlock(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _data() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, 32, 32, generator=g) for _ in range(4)]


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_same_padding_mobile_block_quantizes_within_int8_noise(mode):
    model, data = _model(), _data()
    q = mixq.quantize(model, mode, calib_data=data if mode == "static" else None, example_inputs=data[0],
                      progress=False)
    convs = [r for r in q.mixq_summary.layers if r.kind in ("SamePadConv (conv2d)", "Linear")]
    assert len(convs) == 8 and all(r.status == "quantized" for r in convs), q.mixq_summary
    assert any("SamePadConv" in n for n in q.mixq_summary.notes)
    assert "folded 3.bn1 into 3.depthwise.mixq_conv2d_0" in q.mixq_summary.notes
    x = torch.cat(data)
    with torch.no_grad():
        ref, out = model(x), q(x)
    sqnr = 10 * torch.log10(ref.pow(2).mean() / (out - ref).pow(2).mean())
    assert sqnr > 25, f"{mode}: SQNR {sqnr:.1f} dB"  # int8 noise; a dropped padding gives a shape error or ~0 dB


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = SamePadConv(3, 8, 3, stride=2, image=32)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 100:  # data-dependent control flow: torch.fx cannot trace it
            x = x / 2
        return self.fc(self.conv(x).mean((2, 3)))


def test_an_unlifted_same_padding_conv_is_listed_float_with_its_reason():
    model = _Untraceable().eval()
    q = mixq.quantize(model, "dynamic", progress=False)
    rows = {r.name: r for r in q.mixq_summary.layers}
    assert rows["conv"].status == "float" and "overrides Conv2d.forward" in rows["conv"].detail
    assert any("conv (SamePadConv) stays float: pass example_inputs" in n for n in q.mixq_summary.notes)
    assert rows["fc"].status == "quantized"

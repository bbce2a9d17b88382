"""Identical module instances share one torch.export capture (mixq.quant.capture_reuse): the quantized model is the
one that capturing each instance alone gives, bit for bit, and instances that differ in anything a capture reads
are captured alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mixq
from mixq.quant import capture, capture_reuse
from tests.quant.test_capture_same_padding import SamePadConv


class Repeated(nn.Module):
    """Three identical same-padding convs, one with another stride (its padding differs) and one reading another
    shape."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = SamePadConv(3, 8, 3, image=16)
        self.same = nn.ModuleList(SamePadConv(8, 8, 3, image=16) for _ in range(3))
        self.strided = SamePadConv(8, 8, 3, stride=2, image=16)
        self.wide = SamePadConv(8, 16, 1, image=8)
        self.bn = nn.BatchNorm2d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for conv in self.same:
            x = torch.relu(conv(x))
        return self.bn(self.wide(self.strided(x)))


def _data() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(4, 3, 16, 16, generator=g) for _ in range(3)]


def _counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    captured: list[str] = []
    real = capture._capture

    def counting(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
        captured.append(type(module).__name__)
        return real(module, args, kwargs)

    monkeypatch.setattr(capture, "_capture", counting)
    return captured


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return Repeated().eval()


def test_identical_instances_are_captured_once_with_the_same_result(model, monkeypatch):
    monkeypatch.setattr(capture, "_traced", lambda *a: None)  # reuse is for torch.export captures, not torch.fx's
    captured = _counted(monkeypatch)
    shared = mixq.quantize(model, "static", calib_data=_data(), progress=False)
    assert len(captured) == 4  # stem, the three identical convs once, strided, wide
    monkeypatch.setattr(capture, "signature", lambda *a: None)  # every instance captured alone
    alone = mixq.quantize(model, "static", calib_data=_data(), progress=False)
    assert len(captured) == 4 + 6
    a, b = shared.state_dict(), alone.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(shared(x), alone(x))
    assert shared.mixq_summary.notes == alone.mixq_summary.notes


def test_each_instance_computes_with_its_own_weights(model):
    qmodel = mixq.quantize(model, "static", calib_data=_data(), progress=False)
    weights = [qmodel.get_submodule(f"same.{i}.mixq_conv2d_0").qweight for i in range(3)]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])


def test_a_rebound_graph_reads_the_other_instances_parameters(model):
    x = torch.randn(4, 8, 16, 16)
    template, why = capture._capture(model.same[0], (x,), {})
    assert not why and capture_reuse.reads_own_tensors(template, model.same[0])
    other = capture_reuse.rebound(template, model.same[1], "Captured")
    assert other.weight is model.same[1].weight and template.weight is model.same[0].weight
    assert torch.equal(other(x), model.same[1](x))


def test_what_a_capture_reads_is_in_the_signature(model):
    x = torch.randn(4, 8, 16, 16)
    same = [capture_reuse.signature(m, (x,), {}) for m in model.same]
    assert same[0] is not None and same[0] == same[1] == same[2]
    assert capture_reuse.signature(model.strided, (x,), {}) != same[0]  # stride and padding
    assert capture_reuse.signature(model.same[0], (x[:, :, :8],), {}) != same[0]  # input shape
    assert capture_reuse.signature(model.same[0], (x.double(),), {}) != same[0]  # input dtype


def test_tensors_sharing_memory_are_in_the_signature():
    add = nn.Bilinear(4, 4, 2)
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    assert capture_reuse.signature(add, (x, x), {}) != capture_reuse.signature(add, (x, y), {})
    assert capture_reuse.signature(add, (x, y), {}) == capture_reuse.signature(add, (y, x), {})


@pytest.mark.parametrize("change", ["hook", "forward", "tensor attribute"])
def test_a_module_whose_capture_may_read_more_is_captured_alone(model, change):
    conv = model.same[0]
    if change == "hook":
        conv.register_forward_hook(lambda m, i, o: o * 2)
    elif change == "forward":
        conv.forward = lambda x: x
    else:
        conv.offset = torch.ones(1)
    assert capture_reuse.signature(conv, (torch.randn(4, 8, 16, 16),), {}) is None

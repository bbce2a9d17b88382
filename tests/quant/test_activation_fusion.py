"""Bounded ReLUs (ReLU6, Hardtanh(0, hi)) fuse into the layer before them as ReLU does: the output range is clamped
to [0, hi], so the output quantization's saturation is the clamp and the ONNX graph is Conv -> Relu -> Q (ONNX
Runtime: one QLinearConv), with no Clip and no Q/DQ pair of its own. Activations ONNX Runtime cannot fuse into an
integer kernel (hardswish, SiLU, a Hardtanh with a negative bound) stay float ops, with exactly one Q/DQ pair
between them and the next integer kernel, as ONNX Runtime's own quantizer emits."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixq


class Pair(nn.Module):
    """conv -> BN -> ``act`` -> conv (-> ReLU: the model's output is non-negative, as after a real block)."""

    def __init__(self, act: nn.Module | None = None, functional=None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = act if act is not None else nn.Identity()
        self.functional = functional
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn(self.conv1(x)))
        if self.functional is not None:
            y = self.functional(y)
        return self.conv2(y)


def _model(act: nn.Module | None = None, functional=None) -> nn.Module:
    torch.manual_seed(0)
    model = Pair(act, functional).eval()
    with torch.no_grad():
        model.bn.running_var.fill_(0.05)  # outputs well past 6, so the clamp is exercised
    return model


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(8, 3, 8, 8, generator=g) * 2 for _ in range(4)]


def _quantize_export(model: nn.Module, tmp_path, name: str) -> tuple[nn.Module, Counter, Counter]:
    qmodel = mixq.quantize(model, "static", calib_data=_batches(), progress=False)
    path = mixq.export_onnx(qmodel, _batches()[0][:1], tmp_path / f"{name}.onnx")
    ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    return qmodel, ops, Counter(mixq.optimized_op_types(path))


@pytest.fixture(scope="module")
def relu_reference(tmp_path_factory) -> tuple[nn.Module, Counter, Counter]:
    """The same model with a plain ReLU: what a fused activation's file should look like."""
    return _quantize_export(_model(nn.ReLU()), tmp_path_factory.mktemp("relu"), "relu")


@pytest.mark.parametrize("act", [nn.ReLU6(), nn.Hardtanh(0.0, 2.0), None],
                         ids=["relu6-module", "hardtanh-0-2", "relu6-functional"])
def test_bounded_relu_fuses_like_relu_with_no_clip_and_no_extra_qdq(act, relu_reference, tmp_path, ort_run,
                                                                    within_steps):
    bounded = _model(act, functional=None if act is not None else F.relu6)
    _, relu_ops, relu_optimized = relu_reference
    qmodel, ops, optimized = _quantize_export(bounded, tmp_path, "bounded")
    high = 6.0 if act is None else act.max_val
    conv1 = next(r for r in qmodel.mixq_summary.layers if r.name == "conv1")
    assert f"relu clamped at {high:g} fused" in conv1.detail
    assert ops["Clip"] == 0 and ops["QuantizeLinear"] == relu_ops["QuantizeLinear"]  # no pair of its own
    assert ops["DequantizeLinear"] == relu_ops["DequantizeLinear"]
    assert optimized == relu_optimized  # QLinearConv x 2, the input's Q and the output's DQ: no Clip, no Relu
    y_scale = float(qmodel.get_submodule("conv1").y_scale)
    assert y_scale * 255 <= high * (1 + 1e-6)  # the output grid ends at the bound: saturation is the clamp

    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2  # as calibrated
    with torch.no_grad():
        sim, ref = qmodel(x), bounded(x)
        clamped = bounded.bn(bounded.conv1(x))
    assert (clamped > high).float().mean() > 0.05  # the test exercises the upper clamp
    (runtime,) = ort_run(tmp_path / "bounded.onnx", x)
    out_scale = float(qmodel.get_submodule("conv2").y_scale)
    assert within_steps(runtime, sim.numpy(), out_scale, steps=1) >= 0.999
    rel = float(np.linalg.norm(sim - ref) / np.linalg.norm(ref))
    assert rel < 0.05, rel  # int8 noise: had the clamp been lost, the error would be the clipped mass (> 30%)


def test_hardtanh_with_a_negative_bound_stays_a_float_clip(tmp_path):
    qmodel, ops, _ = _quantize_export(_model(nn.Hardtanh(-1.0, 1.0)), tmp_path, "hardtanh")
    conv1 = next(r for r in qmodel.mixq_summary.layers if r.name == "conv1")
    assert "fused" not in conv1.detail
    assert ops["Clip"] == 1
    x = _batches()[1]
    with torch.no_grad():
        assert float(qmodel(x).sub(_model(nn.Hardtanh(-1.0, 1.0))(x)).norm() / qmodel(x).norm()) < 0.05


@pytest.mark.parametrize("act", [nn.Hardswish(), nn.SiLU()], ids=["hardswish", "silu"])
def test_unfusable_activation_costs_exactly_one_qdq_pair(act, relu_reference, tmp_path):
    _, ops, optimized = _quantize_export(_model(act), tmp_path, "act")
    _, relu_ops, relu_optimized = relu_reference
    assert ops["QuantizeLinear"] == relu_ops["QuantizeLinear"]  # the same file, the activation in place of Relu
    assert optimized["QLinearConv"] == 2
    # ONNX Runtime runs it in float between conv1's int8 output (DequantizeLinear, one per float reader: SiLU's
    # Sigmoid and Mul both read it) and one QuantizeLinear for conv2's input: one more tensor on the grid, no more
    assert optimized["QuantizeLinear"] == relu_optimized["QuantizeLinear"] + 1


def test_qat_fuses_relu6_and_converts_exactly(tmp_path):
    model = _model(nn.ReLU6())
    batches = _batches()
    qat = mixq.prepare_qat(model, example_inputs=batches[0])
    mixq.freeze_batchnorm(qat)
    qat.train()
    with torch.no_grad():
        for x in batches:
            qat(x)
    qat.eval()
    qmodel = mixq.convert(qat)
    assert not any(isinstance(m, nn.Hardtanh) for m in qmodel.modules())  # the grid is the clamp
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2  # as calibrated
    with torch.no_grad():
        assert torch.equal(qat(x), qmodel(x))
        rel = float((qmodel(x) - model(x)).norm() / model(x).norm())
    assert rel < 0.05, rel

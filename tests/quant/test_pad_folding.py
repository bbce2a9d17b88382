"""A zero pad before a convolution (TF-"same" padding written as ``ZeroPad2d`` or ``F.pad``, as EfficientNet-Lite
and MobileNet ports do) is folded into the quantized convolution: the file has no float ``Pad`` between a
DequantizeLinear and a QuantizeLinear, asymmetric amounts land in ONNX ``Conv`` ``pads`` (begins, ends), and
simulation, ONNX Runtime and fp32 agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixq

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


class PaddedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))  # stride-2 TF "same": the extra row and column at the end
        self.depthwise = nn.Conv2d(8, 8, 3, stride=2, groups=8)
        self.head = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.stem(x))
        x = F.relu6(self.depthwise(self.pad(x)))
        return self.head(F.pad(x, (1, 1, 1, 1)))  # symmetric: joins the conv's own padding (2 in all)


def test_zero_pads_fold_into_the_convolutions_and_nothing_changes(tmp_path):
    torch.manual_seed(0)
    model = PaddedNet().eval()
    data = [torch.randn(2, 3, 16, 16) for _ in range(4)]
    q = mixq.quantize(model, "static", calib_data=data, progress=False)
    assert any("2 zero pads merged" in n for n in q.mixq_summary.notes), q.mixq_summary.notes
    path = mixq.export_onnx(q, data[0], tmp_path / "padded.onnx")
    graph = onnx.load(str(path)).graph
    assert "Pad" not in {n.op_type for n in graph.node}
    pads = sorted(tuple(a.ints) for n in graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "pads")
    assert pads == [(0, 0, 1, 1), (1, 1, 1, 1), (2, 2, 2, 2)]
    x = torch.randn(3, 3, 16, 16)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    runtime = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref, sim = model(x).numpy(), q(x).numpy()
    assert np.abs(sim - runtime).max() <= float(q.head.y_scale) + 1e-6  # at most one output step
    sqnr = 10 * np.log10((ref**2).mean() / ((sim - ref) ** 2).mean())
    assert sqnr > 25, f"SQNR {sqnr:.1f} dB"



@pytest.mark.parametrize("pattern", ["depthwise", "*"])
def test_a_convolution_kept_float_after_calibration_still_pads_as_the_pad_it_absorbed(pattern):
    # prepared (and the pad folded) as static, converted with the convolution float: what autoquantize's fp32
    # reference and rungs, and runtime-aware precision, do. The folded pad lives on the convolution (mixq_pads);
    # kept float it must still apply it, or it silently computes a shifted, smaller output (EfficientNet-Lite0's
    # depthwise convolutions kept float: logit SQNR 17 dB -> -3.5 dB)
    from mixq.quant.conversion import convert_prepared
    from mixq.quant.spec import LayerOverride, QuantConfig
    from mixq.quant.stages import calibrate, prepare

    torch.manual_seed(0)
    model = PaddedNet().eval()
    data = [torch.randn(2, 3, 16, 16) for _ in range(3)]
    prepared = prepare(model, QuantConfig("static"), data[0])
    calibrate(prepared, data, progress=False)
    q = convert_prepared(prepared, QuantConfig("static", overrides=(LayerOverride(pattern, "fp32"),)))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert out.shape == ref.shape
    if pattern == "*":
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # nothing quantized: the float model
    else:
        assert 10 * torch.log10(ref.pow(2).mean() / (out - ref).pow(2).mean()) > 25

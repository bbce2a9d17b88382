"""Graph mode (torch.fx): residual adds quantized, scales shared along the dataflow, eager fallback otherwise."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import mixq
from mixq.quant.modules import QuantizedAdd, QuantizedConv


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.pool(self.conv1(x))
        return self.relu(self.conv2(y) + y)


def _calib(n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, 8, 8, generator=g) for _ in range(n)]


def test_residual_add_and_relu_become_one_quantized_add():
    torch.manual_seed(0)
    qmodel = mixq.quantize(_Residual().eval(), "static", calib_data=_calib(), progress=False)
    assert type(qmodel).__name__ == "Quantized_Residual" and isinstance(qmodel, _Residual)  # the graph, same class
    adds = [m for m in qmodel.modules() if isinstance(m, QuantizedAdd)]
    assert len(adds) == 1 and adds[0].relu
    assert not any(isinstance(m, nn.ReLU) for m in qmodel.modules() if m is not qmodel.relu)
    assert "graph mode (torch.fx): 1 adds quantized" in str(qmodel.mixq_summary)


def test_scales_are_shared_through_pass_through_ops():
    torch.manual_seed(0)
    qmodel = mixq.quantize(_Residual().eval(), "static", calib_data=_calib(), progress=False)
    conv1, conv2 = qmodel.conv1, qmodel.conv2
    assert isinstance(conv1, QuantizedConv) and isinstance(conv2, QuantizedConv)
    # conv2 reads conv1's output through MaxPool: same grid, so no requantization in between
    assert torch.equal(conv2.x_scale, conv1.y_scale) and torch.equal(conv2.x_zp, conv1.y_zp)
    add = next(m for m in qmodel.modules() if isinstance(m, QuantizedAdd))
    assert torch.equal(add.x_scale, conv2.y_scale)  # a: conv2's output
    assert torch.equal(add.b_scale, conv1.y_scale)  # b: the pooled conv1 output


def test_quantized_add_tracks_the_float_model():
    torch.manual_seed(0)
    model = _Residual().eval()
    qmodel = mixq.quantize(model, "static", calib_data=_calib(), progress=False)
    x = _calib(1)[0]
    with torch.no_grad():
        err = (qmodel(x) - model(x)).abs()
    step = float(next(m for m in qmodel.modules() if isinstance(m, QuantizedAdd)).y_scale)
    assert err.median() <= 2 * step


def test_untraceable_model_falls_back_to_layer_by_layer():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            if x.sum() > 0:  # control flow on values: torch.fx cannot trace it
                return self.a(x) + self.b(x)
            return self.a(x)

    g = torch.Generator().manual_seed(0)
    qmodel = mixq.quantize(DataDependent(), "static", calib_data=[torch.randn(8, 4, generator=g).abs()],
                           progress=False)
    assert isinstance(qmodel, DataDependent)
    assert "torch.fx could not trace the model" in str(qmodel.mixq_summary)
    assert "graph mode through torch.export not used" in str(qmodel.mixq_summary)  # data-dependent: export fails too
    assert sorted(r.kind for r in qmodel.mixq_summary.quantized) == ["Linear", "Linear"]


def test_adds_of_shapes_stay_plain_python():
    class ShapeMath(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            n = x.size(0) + x.size(1)  # traced as an add of two graph values that are ints
            return self.fc(x) + self.fc(x) * 0 + n

    g = torch.Generator().manual_seed(0)
    qmodel = mixq.quantize(ShapeMath(), "static", calib_data=[torch.randn(8, 4, generator=g)], progress=False)
    x = torch.randn(3, 4, generator=g)
    assert qmodel(x).shape == (3, 4)
    assert all(r.kind in ("Linear", "add") for r in qmodel.mixq_summary.layers)


class _TorchvisionStyleBlock(nn.Module):
    """One ReLU module called twice and an in-place residual add, as torchvision's BasicBlock does."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


def test_shared_relu_module_is_fused_per_call_site(tmp_path):
    torch.manual_seed(0)
    model = _TorchvisionStyleBlock().eval()
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(4, 4, 6, 6, generator=g) for _ in range(3)]
    qmodel = mixq.quantize(model, "static", calib_data=calib, progress=False)
    assert qmodel.conv1.relu and not qmodel.conv2.relu
    assert next(m for m in qmodel.modules() if isinstance(m, QuantizedAdd)).relu
    ops = mixq.optimized_op_types(mixq.export_onnx(qmodel, calib[0][:2], tmp_path / "block.onnx"))
    assert ops["QLinearConv"] == 2 and ops["QLinearAdd"] == 1 and ops["Relu"] == 0 and ops["Add"] == 0, ops
    with torch.no_grad():
        assert (qmodel(calib[0]) - model(calib[0])).abs().median() <= 2 * float(qmodel.conv2.y_scale)



class _Chain(nn.Module):
    """conv -> conv straight (the first one's output is the second one's input), behind control flow torch.fx cannot
    trace: on values (torch.export cannot capture it either, so static goes layer by layer) or on a shape
    (torch.export captures it); ``train_scale`` scales the result in training only, a branch QAT's training-mode
    capture would fix, so QAT goes layer by layer."""

    def __init__(self, on_values: bool, train_scale: float = 1.0):
        super().__init__()
        self.on_values, self.train_scale = on_values, train_scale
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        if (x.sum() > -1e9) if self.on_values else (x.shape[-1] > 1):
            y = self.b(self.a(x))
            return torch.sigmoid(y * self.train_scale if self.training else y)
        return x


def _batches():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, 8, 8, generator=g) for _ in range(4)]


def _layer_by_layer_shares(notes: list[str]) -> bool:
    return any("quantized layer by layer" in n and "(1 inputs share their producer's scale)" in n for n in notes)


def test_qat_captures_with_torch_export_what_torch_fx_cannot_trace():
    qat = mixq.prepare_qat(_Chain(on_values=False).eval(), example_inputs=_batches()[0])
    notes = qat.mixq_qat_plan.notes
    assert any("captured it with torch.export in training mode" in n for n in notes), notes
    assert isinstance(qat, _Chain) and qat.b.shared_input  # the class kept; b reads a's grid along the graph


def test_static_layer_by_layer_consumers_share_their_producers_grid():
    batches = _batches()
    qmodel = mixq.quantize(_Chain(on_values=True).eval(), "static", calib_data=batches[:3], progress=False)
    assert _layer_by_layer_shares(qmodel.mixq_summary.notes)
    assert qmodel.b.x_scale == qmodel.a.y_scale and qmodel.b.x_zp == qmodel.a.y_zp


def test_qat_layer_by_layer_consumers_share_their_producers_grid_so_ort_computes_the_simulation(tmp_path, ort_run):
    batches = _batches()
    qat = mixq.prepare_qat(_Chain(on_values=False, train_scale=1.5).eval(), example_inputs=batches[0])
    assert any("graph mode through torch.export not used: the training-mode graph in eval mode" in n
               for n in qat.mixq_qat_plan.notes)
    assert _layer_by_layer_shares(qat.mixq_qat_plan.notes)
    qat.train()
    for x in batches[:3]:
        qat(x)
    qmodel = mixq.convert(qat.eval())
    assert qmodel.b.x_scale == qmodel.a.y_scale and qmodel.b.x_zp == qmodel.a.y_zp
    path = mixq.export_onnx(qmodel, batches[3], tmp_path / "chain.onnx")
    with torch.no_grad():
        sim = qmodel(batches[3]).numpy()
    # two grids on one tensor would be one rounding on a third grid in ONNX Runtime (DoubleQDQPairsRemover)
    np.testing.assert_allclose(ort_run(path, batches[3])[0], sim, atol=1e-6)

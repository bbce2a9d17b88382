"""``mixq.quant.capture``: layers written in the wild (a Linear subclass that permutes its input, a
weight-standardised Conv2d subclass, ``F.conv2d`` / ``x @ W`` on a module's own parameters, a LoRA-style wrapper)
are captured (torch.fx where it can trace them, else torch.export) and quantized as what they compute, in every mode;
the model keeps its class and its ONNX file computes what the simulation does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixq
from mixq.quant import capture


class FlippedLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flip(-1))


class StandardisedConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class FunctionalConv(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, channels, 3, 3) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, padding=1)


class LoRALinear(nn.Module):
    def __init__(self, features: int, rank: int = 2) -> None:
        super().__init__()
        self.base = nn.Linear(features, features)
        self.lora_a = nn.Parameter(torch.randn(rank, features) * 0.3)
        self.lora_b = nn.Parameter(torch.randn(features, rank) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t()) @ self.lora_b.t()


class WildNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = StandardisedConv(3, 8, 3, padding=1)
        self.functional = FunctionalConv(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flipped = FlippedLinear(8, 16)
        self.lora = LoRALinear(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.functional(torch.relu(self.conv(x)))
        x = torch.relu(self.flipped(self.pool(x).flatten(1)))
        return self.head(self.lora(x))


LAYERS = ["conv.mixq_conv2d_0", "functional.mixq_conv2d_0", "flipped.mixq_linear_0", "lora.base",
          "lora.mixq_matmul_0", "lora.mixq_matmul_1", "head"]


@pytest.fixture(scope="module")
def wild():
    torch.manual_seed(0)
    model = WildNet().eval()
    batches = [torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    return model, batches


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("mode", ["dynamic", "weight_only", "fp16", "static"])
def test_wild_layers_are_quantized_as_they_compute(wild, mode, tmp_path, ort_run):
    model, batches = wild
    qmodel = mixq.quantize(model, mode, calib_data=batches, progress=False)
    summary = qmodel.mixq_summary
    layers = [(r.name, r.status) for r in summary.layers if not r.name.startswith("mixq_add")]  # static's LoRA add
    assert layers == [(n, "quantized") for n in LAYERS]
    assert any("flipped (FlippedLinear) captured with torch.fx" in n for n in summary.notes)
    x = torch.randn(5, 3, 12, 12)  # another batch size than the probe's
    with torch.no_grad():
        ref, y = model(x), qmodel(x)
    assert _relative_error(y, ref) < (0.005 if mode == "fp16" else 0.05)  # swapping for base classes: 20-70 %
    assert isinstance(qmodel, WildNet)  # static graph mode too: the graph runs under the model's class
    path = mixq.export_onnx(qmodel, x, tmp_path / f"{mode}.onnx")
    np.testing.assert_allclose(ort_run(path, x)[0], y.numpy(), atol=1e-4)


@pytest.mark.parametrize("mode", ["static", "dynamic", "qat"])
def test_torch_fx_captures_quantize_as_torch_export_does(wild, mode, monkeypatch):
    """The torch.fx capture (FlippedLinear, FunctionalConv; the computed weight and ``W.t()`` go to torch.export)
    gives the model torch.export's capture gives, bit for bit."""
    model, batches = wild

    notes: list[str] = []

    def quantized() -> nn.Module:
        if mode == "qat":
            qat = mixq.prepare_qat(model, example_inputs=batches[0])
            notes[:] = qat.mixq_qat_plan.notes
            return mixq.convert(qat.eval())
        qmodel = mixq.quantize(model, mode, calib_data=batches, progress=False)
        notes[:] = qmodel.mixq_summary.notes
        return qmodel

    fast = quantized()
    assert sum("captured with torch.fx" in n for n in notes) == 2, notes
    # lora (W.t()), and in PTQ conv (a computed weight, which QAT leaves to the parameters it is computed from)
    assert sum("captured with torch.export" in n for n in notes) == (1 if mode == "qat" else 2), notes
    monkeypatch.setattr(capture, "_traced", lambda *a: None)
    slow = quantized()
    a, b = fast.state_dict(), slow.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(5, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(fast(x), slow(x))


class ShapeDependent(nn.Module):
    """Branches on its input's width: torch.fx cannot trace it (torch.export captures the branch taken)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) if x.shape[-1] == 4 else x


def test_what_torch_fx_cannot_trace_goes_to_torch_export():
    x = torch.randn(3, 4)
    assert capture._traced(ShapeDependent(), (x,), {}) is None
    traced = capture._traced(FunctionalConv(4), (torch.randn(2, 4, 6, 6),), {})
    assert traced is not None and any(n.target is torch.ops.aten.conv2d.default for n in traced.graph.nodes)
    assert capture._traced(StandardisedConv(3, 4, 3), (torch.randn(2, 3, 6, 6),), {}) is None  # computed weight


def test_a_trace_is_checked_against_the_output_the_probe_pass_recorded():
    conv, x = FunctionalConv(4), torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        y = conv(x)
    assert capture._traced(conv, (x,), {}, expected=y) is not None
    assert capture._traced(conv, (x,), {}, expected=y + 1e-6) is None  # not what the module computed: torch.export
    model = nn.Sequential(FunctionalConv(4), nn.ReLU())
    outputs: dict = {}
    capture.first_call_inputs(model, ["0"], x, call=lambda m, b: m(b), outputs=outputs)
    with torch.no_grad():
        assert torch.equal(outputs["0"], model[0](x))  # a copy of the first call's output


def test_a_computed_weight_is_folded_once_from_the_parameters(wild):
    model, batches = wild
    qmodel = mixq.quantize(model, "fp16", example_inputs=batches[0], progress=False)
    w = model.conv.weight
    expected = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
    torch.testing.assert_close(qmodel.conv.mixq_conv2d_0.weight.float(), expected.half().float())


def test_an_excluded_wild_module_stays_as_it_is(wild):
    model, batches = wild
    qmodel = mixq.quantize(model, "dynamic", example_inputs=batches[0], exclude=["flipped"], progress=False)
    assert isinstance(qmodel.flipped, FlippedLinear)
    assert "flipped.mixq_linear_0" not in [r.name for r in qmodel.mixq_summary.layers]


def test_a_model_with_captured_modules_saves_and_loads_bit_for_bit(wild, tmp_path):
    model, batches = wild
    qmodel = mixq.quantize(model, "dynamic", example_inputs=batches[0], progress=False)
    mixq.save_pretrained(qmodel, tmp_path / "q", example_inputs=batches[0][:2])
    again = mixq.from_pretrained(tmp_path / "q", model=WildNet().eval())
    assert isinstance(again, WildNet)
    assert torch.equal(again(batches[1]), qmodel(batches[1]))


class RootComputeNet(nn.Module):
    """Computes with its *own* parameters: ``F.conv2d`` into a BatchNorm submodule, then ``x @ W``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.2)
        self.bn = nn.BatchNorm2d(8)
        self.proj = nn.Parameter(torch.randn(8, 10) * 0.3)
        self.pos = nn.Parameter(torch.randn(1, 8, 1, 1) * 0.1)  # added, not computed with: stays as it is

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(F.conv2d(x, self.stem, padding=1)) + self.pos)
        return x.mean((2, 3)) @ self.proj


@pytest.fixture(scope="module")
def root_net():
    torch.manual_seed(0)
    model = RootComputeNet().eval()
    model.bn.running_mean.uniform_(-0.2, 0.2)
    model.bn.running_var.uniform_(0.5, 2.0)
    return model, [torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(i)) for i in range(4)]


@pytest.mark.parametrize("mode", ["dynamic", "weight_only", "fp16", "static"])
def test_the_models_own_compute_is_quantized_and_the_model_keeps_its_class(root_net, mode, tmp_path, ort_run):
    model, batches = root_net
    qmodel = mixq.quantize(model, mode, calib_data=batches, progress=False)
    layers = {r.name: r.status for r in qmodel.mixq_summary.layers if not r.name.startswith("mixq_add")}
    assert layers == {"mixq_conv2d_0": "quantized", "mixq_matmul_0": "quantized"}  # bn folded, pos left as it is
    assert any("the model's own forward (RootComputeNet) captured" in n for n in qmodel.mixq_summary.notes)
    assert isinstance(qmodel, RootComputeNet)
    x = torch.randn(5, 3, 12, 12)
    with torch.no_grad():
        ref, y = model(x), qmodel(x)
    assert _relative_error(y, ref) < (0.005 if mode == "fp16" else 0.05)
    path = mixq.export_onnx(qmodel, x, tmp_path / f"{mode}.onnx")
    np.testing.assert_allclose(ort_run(path, x)[0], y.numpy(), atol=1e-4)


def test_a_batchnorm_after_captured_compute_is_folded_into_it(root_net):
    model, batches = root_net
    qmodel = mixq.quantize(model, "static", calib_data=batches, progress=False)
    assert "folded bn into mixq_conv2d_0" in qmodel.mixq_summary.notes
    assert not any(isinstance(m, nn.BatchNorm2d) for m in qmodel.modules())


def test_a_root_captured_model_saves_and_loads_bit_for_bit(root_net, tmp_path):
    model, batches = root_net
    qmodel = mixq.quantize(model, "dynamic", example_inputs=batches[0], progress=False)
    mixq.save_pretrained(qmodel, tmp_path / "q", example_inputs=batches[0][:2])
    again = mixq.from_pretrained(tmp_path / "q", model=RootComputeNet().eval())
    assert torch.equal(again(batches[1]), qmodel(batches[1]))


def test_without_inputs_the_models_own_compute_is_named_as_staying_float(root_net):
    model, _ = root_net
    qmodel = mixq.quantize(model, "fp16", progress=False)
    assert any("the model's own parameters (stem, proj, pos) stay float" in n for n in qmodel.mixq_summary.notes)


def test_qat_names_the_models_own_compute_it_leaves_float(root_net):
    model, batches = root_net
    qat = mixq.prepare_qat(model, example_inputs=batches[0])
    assert any("the model's own parameters (stem, proj, pos) stay float" in n for n in qat.mixq_qat_plan.notes)


def test_copying_a_captured_model_raises_no_torch_deprecation_warning(root_net, recwarn):
    model, batches = root_net
    mixq.quantize(model, "static", calib_data=batches, progress=False)
    assert not [w for w in recwarn if "LeafSpec" in str(w.message)]

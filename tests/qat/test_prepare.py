"""``prepare_qat`` / ``convert``: exact eval-vs-converted equality, checkpoints, schedules, PTQ start, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mixq
from mixq.qat import FakeQuantizer, QATLayer, convert, freeze_batchnorm, freeze_observers, prepare_qat


class ConvNet1d(nn.Module):
    """Conv1d+BN+ReLU, a bias-free Conv1d, and a Linear head: every QAT layer type."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv1d(8, 8, 3, padding=1, bias=False)
        self.head = nn.Linear(8 * 16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.conv2(self.relu(self.bn(self.conv(x)))), 1))


def _batches(n: int = 6, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 3, 16, generator=g) for _ in range(n)]


def _train(qat: nn.Module, batches: list[torch.Tensor], lr: float = 1e-3) -> None:
    torch.manual_seed(0)
    opt = torch.optim.SGD(qat.parameters(), lr=lr, momentum=0.9)
    qat.train()
    for x in batches:
        opt.zero_grad()
        qat(x).pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("bits,per_channel,learnable", [(8, True, False), (4, False, False), (3, True, True),
                                                        (2, False, True)])
def test_eval_mode_equals_the_converted_model_exactly(bits, per_channel, learnable):
    torch.manual_seed(0)
    qat = prepare_qat(ConvNet1d(), weight_bits=bits, per_channel=per_channel, learnable_scales=learnable)
    _train(qat, _batches())
    qmodel = convert(qat)
    x = torch.randn(32, 3, 16)
    with torch.no_grad():
        assert torch.equal(qat.eval()(x), qmodel(x))
    assert {r.name for r in qmodel.mixq_summary.quantized} == {"conv", "conv2", "head"}
    assert qmodel.mixq_config.mode == "static" and qmodel.mixq_config.weight.bits == bits
    limit = 2 ** (bits - 1) - 1
    assert int(qmodel.conv.qweight.abs().max()) <= limit and qmodel.conv.qweight.dtype == torch.int8


def test_conv_batchnorm_relu_are_fused_and_the_batchnorm_trains():
    qat = prepare_qat(ConvNet1d(), example_inputs=_batches(1)[0])
    layer = qat.conv
    assert isinstance(layer, QATLayer) and layer.bn is not None and layer.relu
    assert isinstance(qat.bn, nn.Identity) and isinstance(qat.relu, nn.Identity)
    before = layer.bn.running_mean.clone()
    _train(qat, _batches(2))
    assert not torch.equal(before, layer.bn.running_mean)
    assert layer.bn.weight.grad is not None


def test_batchnorm_and_observers_freeze_on_schedule():
    qat = prepare_qat(ConvNet1d(), freeze_observers_after=2, freeze_bn_after=3)
    _train(qat, _batches(3))
    fq = qat.conv.input_observer
    assert not bool(fq.observing) and int(fq.observer.num_batches) == 2
    scale, running = fq.scale.clone(), qat.conv.bn.running_var.clone()
    _train(qat, _batches(2, seed=1))
    assert torch.equal(scale, fq.scale)  # ranges frozen after 2 batches
    assert torch.equal(running, qat.conv.bn.running_var)  # BatchNorm frozen after 3 steps
    assert bool(qat.conv.bn_frozen)


def test_explicit_freeze_calls():
    qat = prepare_qat(ConvNet1d())
    _train(qat, _batches(1))
    assert freeze_observers(qat) == 4 and freeze_batchnorm(qat) == 1
    scale, running = qat.head.output_observer.scale.clone(), qat.conv.bn.running_mean.clone()
    _train(qat, _batches(2, seed=1))
    assert torch.equal(scale, qat.head.output_observer.scale)
    assert torch.equal(running, qat.conv.bn.running_mean)


def test_state_dict_round_trips_into_a_fresh_prepare(tmp_path):
    torch.manual_seed(0)
    model = ConvNet1d()
    qat = prepare_qat(model, weight_bits=4, learnable_scales=True)
    _train(qat, _batches())
    torch.save(qat.state_dict(), tmp_path / "qat.pt")
    resumed = prepare_qat(model, weight_bits=4, learnable_scales=True)
    resumed.load_state_dict(torch.load(tmp_path / "qat.pt", weights_only=True))
    x = torch.randn(8, 3, 16)
    with torch.no_grad():
        assert torch.equal(qat.eval()(x), resumed.eval()(x))
    _train(qat, _batches(2, seed=3))
    _train(resumed, _batches(2, seed=3))
    with torch.no_grad():
        assert torch.equal(qat.eval()(x), resumed.eval()(x))  # training resumes identically


def test_learnable_scales_get_gradients_and_change():
    qat = prepare_qat(ConvNet1d(), weight_bits=4, learnable_scales=True)
    w_scale = qat.conv.weight_scale.detach().clone()
    qat.train()
    qat(_batches(1)[0]).pow(2).mean().backward()
    act = qat.conv.output_observer.scale
    assert isinstance(act, nn.Parameter) and act.grad is not None and float(act.grad.abs()) > 0
    assert qat.conv.weight_scale.grad is not None and bool((qat.conv.weight_scale.grad != 0).any())
    _train(qat, _batches(4), lr=1e-2)
    assert not torch.allclose(qat.conv.weight_scale.detach(), w_scale)
    assert bool((qat.conv.weight_scale > 0).all())


def test_starting_from_a_calibrated_static_model_keeps_its_outputs():
    torch.manual_seed(0)
    model = ConvNet1d().eval()
    ptq = mixq.quantize(model, "static", calib_data=_batches(), progress=False)
    qat = prepare_qat(ptq)
    x = torch.randn(16, 3, 16)
    with torch.no_grad():
        ref, start = ptq(x), qat.eval()(x)
    step = float(ptq.head.y_scale)
    assert (start - ref).abs().max() <= step * 1.0001  # requantizing dequantized weights: at most one step
    assert all(not bool(m.observing) for m in qat.modules() if isinstance(m, FakeQuantizer))
    _train(qat, _batches(2))
    assert torch.equal(convert(qat)(x), qat.eval()(x))


def test_training_under_mixed_precision():
    torch.manual_seed(0)
    qat = prepare_qat(ConvNet1d(), weight_bits=4, learnable_scales=True)
    opt = torch.optim.Adam(qat.parameters(), lr=1e-3)
    mp = mixq.MixedPrecision(qat, opt, precision="bf16")
    for x in _batches(3):
        mp.zero_grad()
        with mp.autocast():
            loss = qat(x).float().pow(2).mean()
        mp.backward(loss)
        mp.step()
    assert torch.isfinite(loss)
    x = torch.randn(4, 3, 16)
    with torch.no_grad():
        assert torch.equal(qat.eval()(x), convert(qat)(x))


@pytest.mark.parametrize("bits", [1, 9, 16, 4.0])
def test_unsupported_weight_bits(bits):
    with pytest.raises(ValueError, match="weight_bits must be an integer from 2 to 8"):
        prepare_qat(ConvNet1d(), weight_bits=bits)


def test_activation_bits_other_than_8():
    with pytest.raises(ValueError, match="activation_bits must be 8"):
        prepare_qat(ConvNet1d(), activation_bits=4)


def test_convert_refuses_a_model_that_was_not_prepared():
    with pytest.raises(ValueError, match="was not prepared for QAT: call qat = mixq.prepare_qat"):
        convert(ConvNet1d())
    ptq = mixq.quantize(ConvNet1d().eval(), "static", calib_data=_batches(2), progress=False)
    with pytest.raises(ValueError, match="already quantized"):
        convert(ptq)


def test_preparing_twice_is_refused():
    qat = prepare_qat(ConvNet1d())
    with pytest.raises(ValueError, match="already prepared for QAT"):
        prepare_qat(qat)


def test_learnable_scales_refuse_a_zero_initial_range():
    qat = prepare_qat(ConvNet1d(), learnable_scales=True)
    with pytest.raises(ValueError, match=r"'conv \(input\)' saw only zeros"):
        qat.train()(torch.zeros(4, 3, 16))
    model = ConvNet1d()
    with torch.no_grad():
        model.conv2.weight[2].zero_()
    with pytest.raises(ValueError, match=r"weight of 'conv2' is all zeros \(output channels \[2\]\)"):
        prepare_qat(model, learnable_scales=True)


def test_nan_inputs_raise_with_the_layer_name_and_leave_observers_clean():
    qat = prepare_qat(ConvNet1d())
    _train(qat, _batches(1))
    state = {k: v.clone() for k, v in qat.state_dict().items()}
    x = _batches(1)[0]
    x[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite values \(NaN or inf\) reached 'conv \(input\)'"):
        qat.train()(x)
    assert all(torch.equal(v, qat.state_dict()[k]) for k, v in state.items() if "observer" in k)


def test_evaluating_before_any_training_batch_explains():
    qat = prepare_qat(ConvNet1d())
    with pytest.raises(mixq.quant.observers.NoDataError, match="run training batches"):
        qat.eval()(torch.randn(2, 3, 16))


def test_frozen_config_round_trips():
    qat = prepare_qat(ConvNet1d(), weight_bits=3, per_channel=False, freeze_bn_after=5, exclude=["head"])
    cfg = qat.mixq_qat
    assert mixq.QATConfig.from_dict(cfg.to_dict()) == cfg
    assert not isinstance(qat.head, QATLayer)


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so QAT wraps layer by layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 12)
        self.b = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if float(h.detach().sum()) > 0:
            h = h * 2
        return self.b(torch.relu(h))


def test_models_torch_fx_cannot_trace_are_prepared_layer_by_layer():
    torch.manual_seed(0)
    qat = prepare_qat(Untraceable())
    assert any("could not trace" in note for note in qat.mixq_qat_plan.notes)
    assert [r.name for r in qat.mixq_qat_plan.quantized] == ["a", "b"]
    opt = torch.optim.Adam(qat.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        qat.train()(torch.randn(8, 6)).pow(2).mean().backward()
        opt.step()
    x = torch.randn(8, 6)
    with torch.no_grad():
        assert torch.equal(qat.eval()(x), convert(qat)(x))


def test_quantizing_or_exporting_an_unconverted_qat_model_says_convert_first(tmp_path):
    qat = prepare_qat(ConvNet1d())
    _train(qat, _batches(1))
    with pytest.raises(ValueError, match=r"cannot export ConvNet1d: it is a quantization-aware training model"):
        mixq.export_onnx(qat, torch.randn(1, 3, 16), tmp_path / "qat.onnx")
    with pytest.raises(ValueError, match=r"convert it first with qmodel = mixq.convert\(model\)"):
        mixq.quantize(qat, "dynamic")
    assert not (tmp_path / "qat.onnx").exists()


def test_depthwise_separable_block_converts_exactly():
    """Depthwise CNNs are where PTQ hurts most; QAT covers grouped convolutions the same way."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
                          nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 8, 1), nn.Flatten(), nn.Linear(8 * 8 * 8, 4))
    x = torch.randn(8, 3, 8, 8)
    qat = prepare_qat(model, example_inputs=x, weight_bits=4, learnable_scales=True)
    assert qat[3].bn is not None and qat[3].layer.groups == 16 and qat[3].relu
    opt = torch.optim.Adam(qat.parameters(), lr=1e-3)
    for seed in range(3):
        opt.zero_grad()
        qat.train()(torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(seed))).pow(2).mean().backward()
        opt.step()
    with torch.no_grad():
        assert torch.equal(qat.eval()(x), convert(qat)(x))
    assert "quantized weights" not in str(qat.mixq_qat_plan).splitlines()[0]  # no sizes before conversion


def test_weight_normed_layers_train_their_parametrization_and_convert_exactly():
    """Wav2Vec2's positional convolution is weight-normed (``torch.nn.utils.parametrizations.weight_norm``): QAT
    trains its ``original0``/``original1`` and converts like any convolution."""
    model = ConvNet1d().eval()
    nn.utils.parametrizations.weight_norm(model.conv2, dim=2)
    qat = prepare_qat(model, example_inputs=_batches(1)[0])
    qat.train()
    loss = sum(qat(x).square().mean() for x in _batches(2))
    loss.backward()
    assert qat.conv2.layer.parametrizations.weight.original1.grad is not None
    qmodel = convert(qat.eval())
    x = _batches(1, seed=3)[0]
    with torch.no_grad():
        assert torch.equal(qat(x), qmodel(x))
    assert qmodel.conv2.qweight.dtype == torch.int8

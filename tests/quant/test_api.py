"""``mixq.quantize``: the contract (copy, summary, exclusions, batch structures) and its errors on bad input."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import mixq
from mixq.quant.modules import DynamicQuantizedLinear, Float16Linear, QuantizedLinear, WeightOnlyLinear
from mixq.quant.spec import LayerOverride


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def _batches(n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(10, 8, generator=g) for _ in range(n)]


def test_quantize_returns_a_copy_and_leaves_the_model_untouched():
    model = _mlp()
    before = copy.deepcopy(model.state_dict())
    qmodel = mixq.quantize(model, "static", calib_data=_batches(), progress=False)
    assert qmodel is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model[0], nn.Linear) and isinstance(model[1], nn.ReLU)
    assert isinstance(qmodel[0], QuantizedLinear) and qmodel[0].relu
    assert isinstance(qmodel[1], nn.Identity)  # the ReLU was fused into the first layer


@pytest.mark.parametrize("mode, cls", [("dynamic", DynamicQuantizedLinear), ("weight_only", WeightOnlyLinear),
                                       ("fp16", Float16Linear)])
def test_modes_swap_linear_layers(mode, cls):
    qmodel = mixq.quantize(_mlp(), mode)
    assert isinstance(qmodel[0], cls) and isinstance(qmodel[2], cls)
    assert isinstance(qmodel[1], nn.ReLU)  # only static mode fuses ReLUs
    x = _batches(1)[0]
    assert torch.allclose(qmodel(x), _mlp()(x), atol=0.05)


def test_weights_are_plain_integer_tensors():
    qmodel = mixq.quantize(_mlp(), "static", calib_data=_batches(), progress=False)
    layer = qmodel[0]
    assert layer.weight_t.dtype == torch.int8 and layer.w_scale.dtype == torch.float32
    assert layer.x_zp.dtype == torch.uint8 and layer.w_scale.shape == (16,)
    assert not any(t.is_quantized for t in qmodel.state_dict().values())
    assert int(layer.weight_t.abs().max()) == 127  # symmetric narrow range, per channel


def test_dynamic_convolutions_come_with_a_speed_warning_in_the_summary():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 5, 5))
    text = str(mixq.quantize(model, "dynamic").mixq_summary)
    assert "ConvInteger" in text and "mode='static' for CNNs" in text
    assert "ConvInteger" not in str(mixq.quantize(_mlp(), "dynamic").mixq_summary)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_reduce_range_keeps_weights_within_seven_bits(mode):
    model = _mlp()
    qmodel = mixq.quantize(model, mode, calib_data=_batches(), reduce_range=True, progress=False)
    assert int(qmodel[0].weight_t.abs().max()) == 63
    x = _batches(1)[0]
    with torch.no_grad():
        assert torch.allclose(qmodel(x), model(x), atol=0.1)


def test_reduce_range_is_refused_where_it_means_nothing():
    with pytest.raises(ValueError, match="reduce_range applies to 8-bit static and dynamic"):
        mixq.quantize(_mlp(), "weight_only", bits=4, reduce_range=True)


def test_per_tensor_weights_on_request():
    qmodel = mixq.quantize(_mlp(), "dynamic", per_channel=False)
    assert qmodel[0].w_scale.dim() == 0


def test_exclude_keeps_layers_float_and_summary_says_why():
    qmodel = mixq.quantize(_mlp(), "static", calib_data=_batches(), exclude=["2"], progress=False)
    assert isinstance(qmodel[2], nn.Linear)
    rows = {r.name: r for r in qmodel.mixq_summary.layers}
    assert rows["2"].status == "float" and "excluded" in rows["2"].detail
    assert rows["0"].status == "quantized"
    text = str(qmodel.mixq_summary)
    assert "1 layers quantized, 1 left float" in text and "excluded by pattern" in text


def test_summary_serialises():
    summary = mixq.quantize(_mlp(), "dynamic").mixq_summary
    data = summary.to_dict()
    assert data["mode"] == "dynamic" and len(data["layers"]) == 2
    assert all(r["bytes_after"] < r["bytes_before"] for r in data["layers"])


def test_unsupported_layers_are_reported_not_crashed_on():
    model = nn.Sequential(nn.Embedding(10, 8), nn.LayerNorm(8), nn.Linear(8, 4))
    qmodel = mixq.quantize(model, "static", calib_data=[torch.randint(0, 10, (4, 3))], progress=False)
    rows = {r.name: r for r in qmodel.mixq_summary.layers}
    assert rows["0"].status == "quantized" and "per-row" in rows["0"].detail  # int8 embedding table
    assert rows["1"].status == "float" and "no quantized kernel for LayerNorm" in rows["1"].detail
    assert rows["2"].status == "quantized"


def test_embedding_table_is_int8_per_row_within_half_a_step():
    torch.manual_seed(0)
    embedding = nn.Embedding(50, 16)
    with torch.no_grad():
        embedding.weight[3] *= 100  # one outlier row must not cost the other rows precision
    qmodel = mixq.quantize(nn.Sequential(embedding), "dynamic")
    layer = qmodel[0]
    assert layer.qweight.dtype == torch.int8 and layer.w_scale.shape == (50,)
    ids = torch.arange(50).reshape(5, 10)
    err = (qmodel(ids) - embedding(ids)).abs().detach()
    assert torch.all(err <= layer.w_scale[ids].unsqueeze(-1) / 2 + 1e-7)
    fp16 = mixq.quantize(nn.Sequential(embedding, nn.Linear(16, 2)), "fp16").mixq_summary
    assert {r.name: r.status for r in fp16.layers} == {"0": "float", "1": "quantized"}


def test_layers_never_called_in_calibration_stay_float():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.used(x)

    qmodel = mixq.quantize(Branchy(), "static", calib_data=_batches(), progress=False)
    rows = {r.name: r for r in qmodel.mixq_summary.layers}
    assert rows["unused"].status == "float" and "never executed" in rows["unused"].detail


class _KwargModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x, y):
        return self.a(x) + self.b(y)


@pytest.mark.parametrize("make_batch", [lambda x, y: (x, y), lambda x, y: [x, y], lambda x, y: {"x": x, "y": y}],
                         ids=["tuple", "list", "dict"])
def test_batch_structures(make_batch):
    batches = [make_batch(t, t * 2) for t in _batches()]
    qmodel = mixq.quantize(_KwargModel(), "static", calib_data=batches, progress=False)
    kinds = sorted(r.kind for r in qmodel.mixq_summary.quantized)
    assert kinds == ["Linear", "Linear", "add"]  # graph mode also quantizes the sum
    x = batches[0]
    out = qmodel(**x) if isinstance(x, dict) else qmodel(*x)
    assert out.shape == (10, 4)


def test_one_shot_generator_is_fully_consumed():
    seen = []

    def gen():
        for b in _batches(4):
            seen.append(b)
            yield b

    qmodel = mixq.quantize(_mlp(), "static", calib_data=gen(), progress=False)
    assert len(seen) == 4
    assert int(qmodel.mixq_summary.quantized[0].bytes_after) > 0


# --- bad input -------------------------------------------------------------------------------------------------

def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown mode 'int3'.*static"):
        mixq.quantize(_mlp(), "int3")


def test_unknown_observer():
    with pytest.raises(ValueError, match="unknown observer 'magic'.*percentile"):
        mixq.quantize(_mlp(), "static", calib_data=_batches(), observer="magic")


def test_static_without_calibration_data():
    with pytest.raises(ValueError, match="needs calib_data"):
        mixq.quantize(_mlp(), "static")


def test_empty_calibration_data():
    with pytest.raises(mixq.CalibrationError, match="empty"):
        mixq.quantize(_mlp(), "static", calib_data=[])


def test_single_tensor_instead_of_iterable():
    with pytest.raises(TypeError, match=r"calib_data=\[x\]"):
        mixq.quantize(_mlp(), "static", calib_data=torch.randn(4, 8))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_calibration_data(bad):
    batches = _batches()
    batches[1][0, 0] = bad
    with pytest.raises(mixq.CalibrationError, match="batch 1 .*NaN or inf"):
        mixq.quantize(_mlp(), "static", calib_data=batches, progress=False)


def test_batch_the_model_cannot_take():
    with pytest.raises(mixq.CalibrationError, match=r"batch 0 \(Tensor\(10, 5\):float32\) could not be passed"):
        mixq.quantize(_mlp(), "static", calib_data=[torch.randn(10, 5)], progress=False)


@pytest.mark.parametrize("bits", [5, 6, 7])  # 16 is outside 2..8 for every mode: test_bits_outside_2_to_8
def test_weight_only_bits_the_runtime_cannot_run(bits):
    with pytest.raises(ValueError, match="MatMulNBits, which takes 2-, 4- or 8-bit"):
        mixq.quantize(_mlp(), "weight_only", bits=bits)


@pytest.mark.parametrize("bits", [1, 9, 16])
def test_bits_outside_2_to_8(bits):
    with pytest.raises(ValueError, match="bits must be between 2 and 8"):
        mixq.quantize(_mlp(), "static", calib_data=_batches(), bits=bits)
    with pytest.raises(ValueError, match="bits must be between 2 and 8"):
        mixq.quantize(_mlp(), "weight_only", bits=bits)


@pytest.mark.parametrize("bits", [3, 4])
def test_narrow_static_weights_are_stored_as_int8_within_their_range(bits):
    qmodel = mixq.quantize(_mlp(), "static", calib_data=_batches(), bits=bits, progress=False)
    limit = 2 ** (bits - 1) - 1
    weights = [b for n, b in qmodel.named_buffers() if n.endswith("weight_t")]
    assert weights and all(w.dtype == torch.int8 and int(w.abs().max()) == limit for w in weights)


def test_model_with_nothing_quantizable_warns_and_returns_float():
    model = nn.Sequential(nn.ReLU(), nn.LayerNorm(4))
    with pytest.warns(UserWarning, match="nothing in Sequential could be quantized"):
        qmodel = mixq.quantize(model, "dynamic")
    x = torch.randn(2, 4)
    assert torch.equal(qmodel(x), model(x))


def test_exclude_as_a_bare_string_is_refused():
    with pytest.raises(TypeError, match="list of name patterns"):
        mixq.quantize(_mlp(), "dynamic", exclude="head")


def test_not_a_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        mixq.quantize(lambda x: x, "dynamic")  # type: ignore[arg-type]


def test_no_warnings_on_the_happy_path():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mixq.quantize(_mlp(), "static", calib_data=_batches(), progress=False)


# --- per-layer overrides and the reusable stages ---------------------------------------------------------------

def test_overrides_give_layers_their_own_mode_in_one_pass():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    overrides = [LayerOverride("0", "fp16"), LayerOverride("2", "fp32"),
                 LayerOverride("4", "static", mixq.ObserverSpec("percentile"))]
    qmodel = mixq.quantize(model, "dynamic", calib_data=_batches(), overrides=overrides, progress=False)
    assert isinstance(qmodel[0], Float16Linear) and isinstance(qmodel[1], nn.ReLU)
    assert type(qmodel[2]) is nn.Linear and isinstance(qmodel[3], nn.ReLU)
    assert isinstance(qmodel[4], QuantizedLinear)
    rows = {r.name: r for r in qmodel.mixq_summary.layers}
    assert rows["2"].status == "float" and "override" in rows["2"].detail
    assert "(percentile)" in rows["4"].detail
    x = _batches(1)[0]
    with torch.no_grad():
        assert torch.allclose(qmodel(x), model(x), atol=0.05)


def test_last_matching_override_wins():
    cfg = mixq.QuantConfig("static", overrides=(LayerOverride("*", "fp32"), LayerOverride("2", "dynamic")))
    assert cfg.choice("2").mode == "dynamic" and cfg.choice("0").mode == "fp32"
    assert cfg.choice("block.0").mode == "fp32"


def test_config_with_overrides_round_trips_through_json():
    import json

    cfg = mixq.make_config("static", observer="mse", overrides=[
        LayerOverride("head", "fp16"), LayerOverride("body.*", "static", mixq.ObserverSpec("percentile"))])
    assert mixq.QuantConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("kwargs, match", [
    (dict(pattern="a", mode="int4"), "unknown layer mode 'int4'"),
    (dict(pattern="a", mode="dynamic", observer=mixq.ObserverSpec("mse")), "observer only applies to static"),
    (dict(pattern="", mode="fp32"), "non-empty"),
])
def test_bad_overrides_are_refused(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        LayerOverride(**kwargs)


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse"])
def test_one_calibration_converts_to_any_observer_exactly(observer, trained_cnn, digits):
    from mixq.quant.conversion import convert_prepared
    from mixq.quant.stages import calibrate, prepare

    x = digits["x_train"].reshape(-1, 1, 8, 8)
    batches = [x[i:i + 100] for i in range(0, 300, 100)]
    cfg = mixq.make_config("static", observer=observer)
    prepared = prepare(trained_cnn, cfg, batches[0], collect=mixq.ObserverSpec("mse"))
    calibrate(prepared, batches, progress=False)
    derived = convert_prepared(prepared, cfg)
    direct = mixq.quantize(trained_cnn, calib_data=batches, config=cfg, progress=False)
    with torch.no_grad():
        assert torch.equal(derived(x[:50]), direct(x[:50]))


def test_mixed_overrides_from_one_calibration_match_one_pass_quantize(trained_cnn, digits):
    from mixq.quant.conversion import convert_prepared
    from mixq.quant.modules import DynamicQuantizedConv, Float16Conv, FloatAdd, QuantizedConv
    from mixq.quant.stages import calibrate, prepare

    x = digits["x_train"].reshape(-1, 1, 8, 8)
    batches = [x[i:i + 100] for i in range(0, 300, 100)]
    overrides = (LayerOverride("stem.0", "dynamic"), LayerOverride("block.conv1", "fp16"),
                 LayerOverride("mixq_add_0", "fp32"), LayerOverride("fc", "static", mixq.ObserverSpec("percentile")))
    cfg = mixq.QuantConfig("static", overrides=overrides)
    prepared = prepare(trained_cnn, mixq.make_config("static"), batches[0], observe_all=True,
                       collect=mixq.ObserverSpec("mse"))
    calibrate(prepared, batches, progress=False)
    derived = convert_prepared(prepared, cfg)
    direct = mixq.quantize(trained_cnn, calib_data=batches, config=cfg, progress=False)
    kinds = {name: type(m) for name, m in derived.named_modules()}
    assert kinds["stem.0"] is nn.Sequential and kinds["stem.0.0"] is DynamicQuantizedConv  # fused ReLU kept
    assert kinds["block.conv1"] is nn.Sequential and kinds["block.conv1.0"] is Float16Conv
    assert kinds["block.conv2"] is QuantizedConv and kinds["mixq_add_0"] is FloatAdd
    with torch.no_grad():
        assert torch.equal(derived(x[:64]), direct(x[:64]))
    assert [(r.name, r.status) for r in derived.mixq_summary.layers] == [
        (r.name, r.status) for r in direct.mixq_summary.layers]

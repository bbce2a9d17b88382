"""Runtime-aware precision with an injected cost table: layers whose int8 kernel is slower stay float (with the
measured ratio in the summary), faster ones are int8, and the file still computes what the simulation does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mixq
from mixq.export.onnx.backend import OrtRuntime
from mixq.quant.runtime_costs import kernel_of


class MobileBlock(nn.Module):
    """A 3-channel stem, a depthwise conv and a 1x1 conv: the kinds whose int8 speed differs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.dw = nn.Conv2d(8, 8, 3, 1, 1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(torch.relu(self.dw(torch.relu(self.stem(x)))))


def _x(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _table(model: MobileBlock, mode: str, stem: float, dw: float, pw: float) -> dict[str, tuple[float, float]]:
    """int8/float ratios per layer, keyed as the layers' kernels at the shapes ``_x()`` gives them."""
    shapes = {"stem": (2, 3, 16, 16), "dw": (2, 8, 8, 8), "pw": (2, 8, 8, 8)}
    ratios = {"stem": stem, "dw": dw, "pw": pw}
    return {kernel_of(getattr(model, n), s, mode, float_input=n == "stem").key: (1.0, ratios[n])  # reads x itself
            for n, s in shapes.items()}


@pytest.fixture
def no_timing(monkeypatch):
    """Fail if anything is timed: with a table (or without a runtime) nothing may be."""
    def refuse(self, kernel, threads=1):
        raise AssertionError(f"timed {kernel.key}")

    monkeypatch.setattr(OrtRuntime, "time_kernel", refuse)


def test_slower_int8_layers_stay_float_with_their_ratio_in_the_summary(no_timing, tmp_path, within_steps):
    model = MobileBlock().eval()
    table = _table(model, "static", stem=1.3, dw=1.15, pw=0.35)
    qmodel = mixq.quantize(model, "static", calib_data=[_x(), _x(seed=1)], progress=False, runtime="ort",
                           kernel_costs=table)
    rows = {r.name: r for r in qmodel.mixq_summary.layers}
    assert rows["pw"].status == "quantized"
    for name, ratio in (("stem", "1.30x"), ("dw", "1.15x")):
        assert rows[name].status == "float"
        assert "slower on ONNX Runtime" in rows[name].detail and ratio in rows[name].detail
    assert any("2 of 3 int8 layers stay float" in n and "not bit for bit" in n for n in qmodel.mixq_summary.notes)
    assert type(qmodel.get_submodule("dw")[0]) is nn.Conv2d  # float, with its fused ReLU back behind it
    path = mixq.export_onnx(qmodel, _x(), tmp_path / "m.onnx")
    ops = mixq.optimized_op_types(path)
    assert ops["QLinearConv"] == 1, ops  # only the 1x1 conv runs an integer kernel
    got = OrtRuntime().run(OrtRuntime().session(path), {"x": _x(3, seed=5).numpy()})[0]
    with torch.no_grad():
        ref = qmodel(_x(3, seed=5)).numpy()
    step = float(qmodel.get_submodule("pw").y_scale)
    assert within_steps(got, ref, step) >= 0.99 and within_steps(got, ref, step, 2) == 1.0


def test_a_tie_or_a_faster_int8_kernel_stays_int8(no_timing):
    model = MobileBlock().eval()
    qmodel = mixq.quantize(model, "static", calib_data=[_x()], progress=False, runtime="ort",
                           kernel_costs=_table(model, "static", stem=1.0, dw=0.9, pw=0.35))
    assert len(qmodel.mixq_summary.quantized) == 3


def test_runtime_aware_false_forces_int8(no_timing):
    qmodel = mixq.quantize(MobileBlock().eval(), "static", calib_data=[_x()], progress=False, runtime="ort",
                           runtime_aware=False)
    assert len(qmodel.mixq_summary.quantized) == 3
    assert qmodel.mixq_config.runtime == "ort" and not qmodel.mixq_config.runtime_aware


def test_without_a_runtime_nothing_is_timed_and_the_config_decides(no_timing):
    qmodel = mixq.quantize(MobileBlock().eval(), "static", calib_data=[_x()], progress=False)
    assert len(qmodel.mixq_summary.quantized) == 3
    assert not any("runtime-aware" in n for n in qmodel.mixq_summary.notes)


def test_a_kernel_missing_from_the_table_keeps_the_configs_precision(no_timing):
    model = MobileBlock().eval()
    table = _table(model, "static", stem=2.0, dw=2.0, pw=2.0)
    table.pop(next(iter(table)))  # the stem's
    qmodel = mixq.quantize(model, "static", calib_data=[_x()], progress=False, runtime="ort", kernel_costs=table)
    assert [r.name for r in qmodel.mixq_summary.quantized] == ["stem"]
    assert any("1 kernel shapes were not timed" in n for n in qmodel.mixq_summary.notes)


def test_dynamic_convs_slower_than_float_export_no_conv_integer(no_timing, tmp_path):
    model = MobileBlock().eval()
    table = _table(model, "dynamic", stem=6.0, dw=9.0, pw=3.0)  # ConvInteger, as measured on x86 ONNX Runtime
    with pytest.warns(UserWarning, match="nothing in MobileBlock could be quantized"):
        qmodel = mixq.quantize(model, "dynamic", example_inputs=_x(), runtime="ort", kernel_costs=table)
    assert not qmodel.mixq_summary.quantized
    assert not any("ConvInteger" in n for n in qmodel.mixq_summary.notes)
    path = mixq.export_onnx(qmodel, _x(), tmp_path / "dyn.onnx")
    assert "ConvInteger" not in mixq.optimized_op_types(path)
    assert OrtRuntime().check(qmodel, path, _x(3, seed=2)) <= 1e-5


def test_dynamic_convs_int8_only_where_not_slower_are_not_warned_about(no_timing):
    model = MobileBlock().eval()
    table = _table(model, "dynamic", stem=6.0, dw=9.0, pw=0.8)  # the 1x1 conv's ConvInteger is faster here
    aware = mixq.quantize(model, "dynamic", example_inputs=_x(), runtime="ort", kernel_costs=table)
    assert [r.name for r in aware.mixq_summary.quantized] == ["pw"]
    assert any("left int8 run as ConvInteger: runtime-aware precision found them no slower" in n
               for n in aware.mixq_summary.notes)
    plain = mixq.quantize(model, "dynamic", example_inputs=_x())
    assert any("several times slower than float Conv" in n for n in plain.mixq_summary.notes)


@pytest.mark.parametrize("options, message", [
    ({"runtime": "nope"}, "unknown runtime 'nope'"),
    ({"runtime_aware": False}, "runtime_aware=False has no effect without a runtime"),
    ({"runtime_aware": "yes", "runtime": "ort"}, "runtime_aware must be True or False"),
    ({"mode": "fp16", "runtime": "ort"}, "runtime='ort' has no effect in fp16 mode"),
    ({"mode": "dynamic", "runtime": "ort"}, "needs example_inputs"),
    ({"kernel_costs": {}}, "kernel_costs has no effect without runtime-aware precision"),
    ({"mode": "weight_only", "runtime": "ort"}, r"runtime='ort' has no effect in weight_only mode.*\(litert\)"),
    ({"mode": "weight_only", "runtime": "litert", "kernel_costs": {}}, "kernel_costs has no effect"),
], ids=["unknown", "aware-without-runtime", "not-bool", "fp16", "no-probe", "table-without-runtime",
        "weight-only-for-ort", "weight-only-table"])
def test_runtime_options_are_refused_before_any_work(no_timing, options, message):
    mode = options.pop("mode", "static")
    data = {"calib_data": [_x()]} if mode == "static" else {}
    with pytest.raises((ValueError, TypeError), match=message):
        mixq.quantize(MobileBlock().eval(), mode, progress=False, **data, **options)


def test_weight_only_for_litert_times_nothing_and_needs_no_data():
    """A runtime shapes weight-only layers' arithmetic only (LiteRT's per-row rounding), never their precision."""
    qmodel = mixq.quantize(nn.Sequential(nn.Linear(64, 8)), "weight_only", bits=4, group_size=32, runtime="litert",
                           progress=False)
    assert qmodel[0].rows and not any("runtime-aware" in n for n in qmodel.mixq_summary.notes)


def test_the_runtime_round_trips_through_the_config_dict():
    config = mixq.make_config("static", runtime="ort", runtime_aware=False)
    assert mixq.QuantConfig.from_dict(config.to_dict()) == config
    assert mixq.QuantConfig.from_dict({**config.to_dict(), "runtime": None, "runtime_aware": True}).runtime is None
    np.testing.assert_equal(mixq.QuantConfig.from_dict(mixq.make_config("static").to_dict()).runtime_aware, True)


@pytest.fixture
def stem_slower_alone(monkeypatch, tmp_path):
    """One-op timing (faked) finds only the stem slower in int8; the cache is this test's own."""
    from mixq.quant.runtime_costs import KernelCost

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def timed(self, kernel, threads=1):
        return KernelCost(1.0, 1.5 if kernel.input_shape[1] == 3 else 0.5)

    monkeypatch.setattr(OrtRuntime, "time_kernel", timed)


def _whole_model(monkeypatch, outcome):
    """Replace the whole-model timing with ``outcome`` (a KernelCost, or an exception to raise); returns its calls."""
    from mixq.quant import runtime_precision

    calls = []

    def timed(prepared, kept, candidates, example, runtime):
        calls.append(sorted(candidates))
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(runtime_precision, "time_variants", timed)
    return calls


def _quantize_for_ort(model: nn.Module) -> nn.Module:
    return mixq.quantize(model, "static", calib_data=[_x(), _x(seed=1)], progress=False, runtime="ort")


def test_layers_slower_alone_stay_int8_when_the_whole_file_is_not_faster(stem_slower_alone, monkeypatch):
    from mixq.quant.runtime_costs import KernelCost

    calls = _whole_model(monkeypatch, KernelCost(float_ms=9.9, int8_ms=10.0))  # within the margin: not faster
    model = MobileBlock().eval()
    qmodel = _quantize_for_ort(model)
    assert calls == [["stem"]]
    assert {r.name: r.status for r in qmodel.mixq_summary.layers} == dict.fromkeys(("stem", "dw", "pw"), "quantized")
    note = next(n for n in qmodel.mixq_summary.notes if "runtime-aware" in n)
    assert "0 of 3" in note and "1 layer (stem) timed slower in int8 alone" in note and "9.90 ms with it" in note
    again = _quantize_for_ort(model)  # the whole model's timing is cached with the kernels'
    assert calls == [["stem"]] and again.mixq_summary.notes == qmodel.mixq_summary.notes


def test_layers_slower_alone_stay_float_when_the_whole_file_is_faster(stem_slower_alone, monkeypatch):
    from mixq.quant.runtime_costs import KernelCost

    _whole_model(monkeypatch, KernelCost(float_ms=9.0, int8_ms=10.0))
    qmodel = _quantize_for_ort(MobileBlock().eval())
    assert {r.name: r.status for r in qmodel.mixq_summary.layers}["stem"] == "float"
    assert any("1 of 3" in n and "the whole file is faster so (9.00 ms" in n for n in qmodel.mixq_summary.notes)


def test_a_whole_file_that_cannot_be_timed_leaves_the_one_op_verdict_and_says_why(stem_slower_alone, monkeypatch):
    _whole_model(monkeypatch, RuntimeError("cannot export this graph\nlong trace"))
    qmodel = _quantize_for_ort(MobileBlock().eval())
    assert {r.name: r.status for r in qmodel.mixq_summary.layers}["stem"] == "float"
    assert any("not checked in the whole model (its file could not be timed: cannot export this graph)" in n
               for n in qmodel.mixq_summary.notes)


def test_the_whole_file_timing_exports_both_variants_and_times_them(monkeypatch):
    from mixq.quant.api import _config
    from mixq.quant.model_timing import time_variants
    from mixq.quant.stages import calibrate, prepare

    opened = []
    session = OrtRuntime.session

    def recording(self, path, threads=None):
        opened.append((mixq.optimized_op_types(path), threads))
        return session(self, path, threads)

    monkeypatch.setattr(OrtRuntime, "session", recording)
    prepared = prepare(MobileBlock().eval(), _config("static", None, {}), _x())
    calibrate(prepared, [_x(), _x(seed=1)], progress=False)
    cost = time_variants(prepared, {}, {"dw": "test"}, _x(), "ort")
    assert cost.float_ms > 0 and cost.int8_ms > 0
    (int8_ops, int8_threads), (float_ops, float_threads) = opened
    assert int8_ops.get("QLinearConv") == 3 and "Conv" not in int8_ops, int8_ops
    assert float_ops.get("QLinearConv") == 2 and float_ops.get("Conv") == 1, float_ops  # dw, float
    assert int8_threads == float_threads == 1


def test_a_model_too_large_to_export_twice_is_not_checked(stem_slower_alone, monkeypatch):
    from mixq.quant import model_timing

    calls = _whole_model(monkeypatch, AssertionError("timed"))
    monkeypatch.setattr(model_timing, "MAX_PARAMETERS", 10)
    model = MobileBlock().eval()
    qmodel = _quantize_for_ort(model)
    assert not calls and {r.name: r.status for r in qmodel.mixq_summary.layers}["stem"] == "float"
    count = sum(p.numel() for p in model.parameters())
    assert any(f"not checked in the whole model ({count:,} parameters" in n for n in qmodel.mixq_summary.notes)

"""``autoquantize(runtime=...)``: latency measured on the runtime the user names (OpenVINO beside ONNX Runtime),
the name reaching the meters, the layer probe and the report; bad names refused in one line before any work."""

from __future__ import annotations

import pytest
import torch

import mixq
import mixq.auto.api as api
from mixq.auto import autoquantize
from mixq.auto.measure import Measurement, OrtMeter

FAST = mixq.QuantConfig("static", observer=mixq.ObserverSpec("minmax", bins=256))


class _Meters:
    """``OrtMeter`` stand-in recording the runtime each meter is built for; int8 twice as fast as fp32."""

    def __init__(self):
        self.runtimes = []

    def __call__(self, example_inputs, runtime="ort"):
        from mixq.export.backend import get_runtime

        self.runtimes.append(runtime)
        self.runtime, self.folder, self.threads = get_runtime(runtime), None, 1
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def measure(self, models):
        return {label: Measurement(1.0 if label == "fp32" else 0.5, 1000) for label in models}

    def compare(self, a, b):
        from mixq.auto.latency import Comparison

        return Comparison(0.5, 0.5, 7, 15)


def test_the_runtime_reaches_the_meters_the_layer_probe_and_the_report(outlier_case, monkeypatch):
    model, batches, eval_fn = outlier_case
    meters, probed = _Meters(), []

    def compare_layer(float_layer, int8_layer, x, folder, tag, threads=1, runtime="ort"):
        from mixq.auto.latency import Comparison

        probed.append(runtime)
        return Comparison(0.4, 0.3, 15, 15)

    monkeypatch.setattr(api, "OrtMeter", meters)
    monkeypatch.setattr(api, "compare_layer", compare_layer)
    report = autoquantize(model, batches, eval_fn, max_drop=0.05, config=FAST, deploy_shapes=[4],
                          runtime="openvino:f32").report
    assert meters.runtimes == ["openvino:f32"] and probed and set(probed) == {"openvino:f32"}
    assert report.runtime == "OpenVINO f32" and report.to_dict()["runtime"] == "OpenVINO f32"
    assert "| OpenVINO f32 latency (ms) |" in report.to_markdown()
    assert any(n.startswith("latency probe:") and "timed alone on OpenVINO in" in n for n in report.notes)


def test_ort_stays_the_default_header(outlier_case, monkeypatch):
    model, batches, eval_fn = outlier_case
    monkeypatch.setattr(api, "OrtMeter", _Meters())
    report = autoquantize(model, batches, eval_fn, max_drop=0.05, config=FAST, objective="size",
                          deploy_shapes=[4]).report
    assert report.runtime == "ORT" and "| ORT latency (ms) |" in report.to_markdown()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"runtime": "tensorrt"}, "unknown runtime 'tensorrt'; known runtimes: litert, openvino, ort"),
    ({"runtime": "openvino:f16"}, "runtime 'openvino' has no option value 'f16'; its values: default, f32, bf16"),
    ({"runtime": "openvino", "objective": "accuracy", "measure": False},
     "runtime='openvino' has no effect with measure=False and objective='accuracy' (nothing is timed); drop it or "
     "pass measure=True"),
], ids=["unknown", "bad-option", "nothing-timed"])
def test_bad_runtimes_are_refused_before_any_work(outlier_case, kwargs, message):
    model, batches, _ = outlier_case
    calls = []
    with pytest.raises(ValueError) as info:
        autoquantize(model, batches, lambda m: calls.append(m) or 1.0, config=FAST, **kwargs)
    assert str(info.value) == message and calls == []


def test_a_missing_runtime_names_its_extra(outlier_case, monkeypatch):
    from mixq.export.openvino.backend import OpenVINORuntime

    monkeypatch.setattr(OpenVINORuntime, "available", lambda self: False)
    model, batches, eval_fn = outlier_case
    with pytest.raises(ValueError, match=r"^runtime='openvino' needs OpenVINO, which is not installed; install the "
                                         r"OpenVINO extra: pip install \"mixq\[openvino\]\"$"):
        autoquantize(model, batches, eval_fn, config=FAST, runtime="openvino")


def test_the_meter_exports_and_times_on_openvino(outlier_case):
    pytest.importorskip("openvino")
    model = outlier_case[0]
    int8 = mixq.quantize(model, FAST, calib_data=outlier_case[1], progress=False)
    with OrtMeter(torch.randn(4, 16), runs=6, rounds=2, runtime="openvino:f32") as meter:
        times = meter.measure({"fp32": model, "int8": int8})
        assert meter.runtime.label == "openvino:f32" and meter.compare("fp32", "int8").pairs == 15
    assert all(m.latency_ms > 0 and m.size_bytes > 0 for m in times.values())
    assert times["int8"].size_bytes < times["fp32"].size_bytes

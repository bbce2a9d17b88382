"""The backend registry: formats and runtimes looked up by name or by file path, unknown names refused in one line,
and registration that imports no backend library."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from mixq.export.backend import format_for, formats, get_format, get_runtime, runtime_for, runtimes


@pytest.mark.parametrize(("name", "suffix", "runtime"), [("onnx", ".onnx", "ort"), ("tflite", ".tflite", "litert")],
                         ids=["onnx", "tflite"])
def test_lookup_by_name_and_path(name, suffix, runtime):
    fmt = get_format(name)
    assert fmt.suffix == suffix and fmt.name == name
    assert format_for(f"dir/model{suffix}") is fmt and format_for(f"MODEL{suffix.upper()}") is fmt
    rt = get_runtime(runtime)
    assert rt.format == name and runtime_for(f"model{suffix}") is rt


def test_every_runtime_runs_a_registered_format():
    names = {f.name for f in formats()}
    assert {"onnx", "tflite"} <= names and {"ort", "litert"} <= {r.name for r in runtimes()}
    assert all(r.format in names for r in runtimes())


@pytest.mark.parametrize(("lookup", "kind", "known"), [(get_format, "format", "onnx, tflite"),
                                                        (get_runtime, "runtime", "litert, openvino, ort")],
                         ids=["format", "runtime"])
def test_unknown_name_is_refused_in_one_line_listing_the_known(lookup, kind, known):
    with pytest.raises(ValueError) as info:
        lookup("tensorrt")
    message = str(info.value)
    assert "\n" not in message and f"unknown {kind} 'tensorrt'" in message and known in message


def test_runtime_options_parse_by_value_or_key_and_leave_the_registered_runtime_alone():
    plain = get_runtime("openvino")
    f32 = get_runtime("openvino:f32")
    assert f32 is not plain and f32.chosen == {"precision": "f32"} and plain.chosen == {}
    assert f32.label == "openvino:f32" and get_runtime("openvino:precision=bf16").label == "openvino:bf16"
    assert [v.label for v in plain.variants()] == ["openvino:f32", "openvino:default"]
    assert get_runtime("ort").variants() == [get_runtime("ort")] and get_runtime("ort").label == "ort"


@pytest.mark.parametrize(("name", "message"), [
    ("openvino:f16", "runtime 'openvino' has no option value 'f16'; its values: default, f32, bf16"),
    ("openvino:precision=f8", "runtime 'openvino' option precision must be one of default, f32, bf16, not 'f8'"),
    ("openvino:threads=2", "runtime 'openvino' has no option 'threads'; it takes precision"),
    ("ort:f32", "runtime 'ort' has no option value 'f32'; its values: none"),
], ids=["value", "key-value", "key", "no-options"])
def test_bad_runtime_options_are_refused_in_one_line(name, message):
    with pytest.raises(ValueError) as info:
        get_runtime(name)
    assert str(info.value) == message


@pytest.mark.parametrize(("path", "runtime", "message"), [
    ("m.tflite", "openvino", "runtime 'openvino' runs .onnx files, not m.tflite; .tflite files run on: litert"),
    ("m.onnx", "litert", "runtime 'litert' runs .tflite files, not m.onnx; .onnx files run on: ort, openvino"),
], ids=["openvino-tflite", "litert-onnx"])
def test_a_runtime_for_another_format_is_refused(path, runtime, message):
    assert runtime_for("m.onnx", runtime="openvino:f32").label == "openvino:f32"
    with pytest.raises(ValueError) as info:
        runtime_for(path, runtime=runtime)
    assert str(info.value) == message


def test_unknown_suffix_uses_the_default_or_is_refused():
    assert format_for("model.bin").name == "onnx" and runtime_for("model.bin").name == "ort"
    with pytest.raises(ValueError, match=r"'model.bin' has no known model suffix; known: .onnx, .tflite"):
        format_for("model.bin", default=None)


def test_registry_imports_no_backend_library():
    code = ("import sys; from mixq.export.backend import runtimes; [r.name for r in runtimes()]; "
            "print([m for m in ('onnx', 'onnxruntime', 'onnxscript', 'litert_torch', 'ai_edge_litert', "
            "'openvino') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_ort_runtime_exports_runs_times_and_checks(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval()
    x = torch.randn(2, 4)
    rt = get_runtime("ort")
    path = get_format(rt.format).export(model, x, tmp_path / "m.onnx")
    session = rt.session(path, threads=1)
    feeds = rt.feeds(session, [x])
    (y,) = rt.run(session, feeds)
    np.testing.assert_allclose(y, model(x).detach().numpy(), atol=1e-5)
    assert rt.feeds(session, {rt.input_names(session)[0]: x}).keys() == feeds.keys()
    assert rt.measure({"m": (session, feeds)}, runs=3, warmup=1, rounds=1)["m"].runs == 3
    assert rt.check(model, path, x) < 1e-5
